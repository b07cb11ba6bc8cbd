"""`salesbot chat` and `salesbot demo`: talk to a flow in the terminal, or watch a scripted call."""

from __future__ import annotations

import contextlib
import re

import click
from rich.table import Table

from engine.cli.common import (
    DB_HELP,
    ConfigError,
    _load_flow_or_exit,
    _parse_slots,
    console,
)
from engine.errors import SalesbotError, SessionNotFound

BACKEND_HELP = "LLM backend for this run (default: the flow's llm.backend)."


def _build_engine(flow_dir: str, db: str, backend: str | None = None):
    from sqlalchemy.exc import SQLAlchemyError

    from engine.engine import Engine
    from storage.repository import describe_db_error

    flow = _load_flow_or_exit(flow_dir)  # configuration errors exit 2 before any model loads
    with console.status("Loading flow, classifier, embedder and LLM..."):
        try:
            engine = Engine.from_flow_dir(flow_dir, db, **_backend_choice(flow, backend))
        except SalesbotError as exc:
            raise ConfigError(str(exc)) from None
        except (SQLAlchemyError, ModuleNotFoundError) as exc:  # unreachable, bad URL, no driver
            raise ConfigError(f"--db: cannot open the database: {describe_db_error(exc)}") from None
        engine.backend.load()  # type: ignore[attr-defined]
    return engine


def _backend_choice(flow, backend: str | None) -> dict:
    """``from_flow_dir`` arguments for ``--backend``: the stand-in ``script-sampler`` (no model,
    drafts from the flow's own scripts) needs the flow, so it is built here."""
    if backend != "script-sampler":
        return {"backend_name": backend}
    from engine.llm import create_backend
    from engine.simulation import standin  # noqa: F401  (registers script-sampler)

    return {"backend": create_backend(backend, flow=flow)}


def _reply_line(reply) -> None:
    intent = f"{reply.intent} {reply.confidence:.2f}" if reply.intent else "-"
    console.print(
        f"[dim]\\[{reply.stage} | {intent} | {reply.source}"
        f"{' ' + reply.script_id if reply.script_id else ''}][/dim]"
    )
    console.print(f"[bold cyan]bot:[/bold cyan] {reply.text}")
    if reply.ended:
        console.print(f"[yellow]call ended: {reply.outcome}[/yellow]")


@click.command()
@click.argument("flow_dir", type=click.Path())
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--customer-id", default="cli-customer", show_default=True)
@click.option("--slot", "slots", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option(
    "--session",
    "session_id",
    default=None,
    help="Continue this session, or start it under this id if there is none (LLM drafts are "
    "sampled with a seed from the session id, so a named new session replays the same).",
)
@click.option("--backend", default=None, help=BACKEND_HELP)
def chat(
    flow_dir: str, db: str, customer_id: str, slots: tuple[str, ...], session_id, backend
) -> None:
    """Talk to a flow in the terminal. Empty line or Ctrl-D hangs up."""
    from engine.http.schemas import SESSION_ID

    values = _parse_slots(slots)
    if session_id is not None and not re.fullmatch(SESSION_ID, session_id):
        raise click.UsageError(
            f"--session {session_id!r}: 1 to 64 letters, digits, '_' or '-' (as in the HTTP API)"
        )
    engine = _build_engine(flow_dir, db, backend)
    try:
        existing = None
        if session_id:
            with contextlib.suppress(SessionNotFound):
                existing = engine.store.get(session_id)
        if existing is not None:
            console.print(f"continuing session {session_id}")
        else:
            values.setdefault("customer_name", "Alex")
            reply = engine.start(customer_id, values, session_id=session_id)
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


@click.command()
@click.argument("flow_dir", type=click.Path(), default="flows/broadband_en")
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--backend", default=None, help=BACKEND_HELP + " script-sampler: no model.")
def demo(flow_dir: str, db: str, backend: str | None) -> None:
    """Run one scripted call end to end through the real engine and print the transcript.

    The caller's lines come from the flow (its demo.yaml, else its utterance bank), so a flow in
    any language is answered in that language.
    """
    from engine.simulation.demo_lines import load_demo

    try:
        script = load_demo(_load_flow_or_exit(flow_dir))
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None
    engine = _build_engine(flow_dir, db, backend)
    reply = engine.start("demo-customer", script.slots)
    _reply_line(reply)
    for text in script.lines:
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
