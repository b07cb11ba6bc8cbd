"""The `salesbot` command. A thin layer: parse, call the library, format, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (click's convention).
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.table import Table

from engine.cli_common import (
    DB_HELP,
    ConfigError,
    _load_flow_or_exit,
    _parse_slots,
    console,
)
from engine.errors import SalesbotError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@click.group()
@click.version_option(package_name="salesbot")
def main() -> None:
    """salesbot: hybrid sales-call dialogue engine."""


@main.command()
@click.argument("flow_dir", type=click.Path())
def validate(flow_dir: str) -> None:
    """Validate a flow folder; exit 0 when valid, 2 with every problem listed otherwise."""
    flow = _load_flow_or_exit(flow_dir)
    llm = sum(1 for s in flow.stages.values() if s.kind == "llm")
    console.print(
        f"[green]ok[/green] {flow.name} ({flow.language}): {len(flow.stages)} stages "
        f"({llm} llm), {len(flow.intents)} intents, "
        f"{sum(len(v) for v in flow.intents.values())} examples, {len(flow.scripts)} scripts"
    )
    console.print(f"version {flow.version}")


@main.command()
@click.argument(
    "file", type=click.Choice(["flow.yaml", "intents.yaml", "scripts.yaml"]), default="flow.yaml"
)
def schema(file: str) -> None:
    """Print the JSON Schema of one flow file (for editors' YAML language servers)."""
    from engine.flow_schema import json_schema

    click.echo(json.dumps(json_schema(file), indent=2, ensure_ascii=False))


BACKEND_HELP = "LLM backend for this run (default: the flow's llm.backend)."


def _build_engine(flow_dir: str, db: str, backend: str | None = None):
    from sqlalchemy.exc import SQLAlchemyError

    from engine.engine import Engine
    from storage.repository import describe_db_error

    _load_flow_or_exit(flow_dir)  # configuration errors exit 2 before any model loads
    with console.status("Loading flow, classifier, embedder and LLM..."):
        try:
            engine = Engine.from_flow_dir(flow_dir, db, backend_name=backend)
        except SalesbotError as exc:
            raise ConfigError(str(exc)) from None
        except (SQLAlchemyError, ModuleNotFoundError) as exc:  # unreachable, bad URL, no driver
            raise ConfigError(f"--db: cannot open the database: {describe_db_error(exc)}") from None
        engine.backend.load()  # type: ignore[attr-defined]
    return engine


def _reply_line(reply) -> None:
    intent = f"{reply.intent} {reply.confidence:.2f}" if reply.intent else "-"
    console.print(
        f"[dim]\\[{reply.stage} | {intent} | {reply.source}"
        f"{' ' + reply.script_id if reply.script_id else ''}][/dim]"
    )
    console.print(f"[bold cyan]bot:[/bold cyan] {reply.text}")
    if reply.ended:
        console.print(f"[yellow]call ended: {reply.outcome}[/yellow]")


@main.command()
@click.argument("flow_dir", type=click.Path())
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--customer-id", default="cli-customer", show_default=True)
@click.option("--slot", "slots", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--session", "session_id", default=None, help="Continue an existing session.")
@click.option("--backend", default=None, help=BACKEND_HELP)
def chat(
    flow_dir: str, db: str, customer_id: str, slots: tuple[str, ...], session_id, backend
) -> None:
    """Talk to a flow in the terminal. Empty line or Ctrl-D hangs up."""
    values = _parse_slots(slots)
    engine = _build_engine(flow_dir, db, backend)
    try:
        if session_id:
            engine.store.get(session_id)
            console.print(f"continuing session {session_id}")
        else:
            values.setdefault("customer_name", "Alex")
            reply = engine.start(customer_id, values)
            session_id = reply.session_id
            console.print(f"session {session_id}")
            _reply_line(reply)
        while True:
            try:
                text = click.prompt("you", prompt_suffix=": ", default="", show_default=False)
            except (EOFError, click.Abort):
                text = ""
            if not text.strip():
                engine.end(session_id, "hangup")
                console.print("[yellow]you hung up[/yellow]")
                return
            reply = engine.turn(session_id, text)
            _reply_line(reply)
            if reply.ended:
                return
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None


DEMO_CALLER = [
    "yes speaking",
    "sure, it's 12 Oak Street",
    "we stream a lot of films and I work from home",
    "hmm that sounds quite expensive to be honest",
    "ok go on then, sign me up",
    "yes that's fine, go ahead",
]


@main.command()
@click.argument("flow_dir", type=click.Path(), default="flows/broadband_en")
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--backend", default=None, help=BACKEND_HELP)
def demo(flow_dir: str, db: str, backend: str | None) -> None:
    """Run one scripted call end to end through the real engine and print the transcript."""
    engine = _build_engine(flow_dir, db, backend)
    reply = engine.start("demo-customer", {"customer_name": "Alex"})
    _reply_line(reply)
    for text in DEMO_CALLER:
        if reply.ended:
            break
        console.print(f"[bold green]caller:[/bold green] {text}")
        reply = engine.turn(reply.session_id, text)
        _reply_line(reply)
    if not reply.ended:
        engine.end(reply.session_id, "hangup")
    _print_transcript(engine, reply.session_id)


def _print_transcript(engine, session_id: str) -> None:
    table = Table(title=f"Stored transcript {session_id}")
    for column in ("#", "caller", "stage", "intent", "source", "script", "ms"):
        table.add_column(column)
    for t in engine.transcript(session_id):
        table.add_row(
            str(t.turn_index),
            t.user_text or "",
            t.stage,
            t.intent or "",
            t.source,
            t.script_id or "",
            f"{t.latencies.get('total_ms', 0):.0f}",
        )
    console.print(table)
    conversation = engine.store.get(session_id)
    console.print(f"outcome: [bold]{conversation.outcome}[/bold]  database: {engine.store.url}")


def _register_subcommands() -> None:
    """Command groups live in their own modules (shared helpers are in ``engine.cli_common``)."""
    from engine.cli_capacity import capacity
    from engine.cli_compliance import compliance
    from engine.cli_intents import intents
    from engine.cli_report import report
    from engine.cli_serve import serve
    from engine.cli_simulate import simulate

    for command in (capacity, compliance, intents, report, serve, simulate):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
