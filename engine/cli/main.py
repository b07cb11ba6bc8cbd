"""The `salesbot` command. A thin layer: parse, call the library, format, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (click's convention).
"""

from __future__ import annotations

import json
import os
import sys

import click

from engine.cli.common import _load_flow_or_exit, console

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
    for warning in flow.warnings:
        console.print(f"[yellow]{warning}[/yellow]")


@main.command()
@click.argument(
    "file", type=click.Choice(["flow.yaml", "intents.yaml", "scripts.yaml"]), default="flow.yaml"
)
def schema(file: str) -> None:
    """Print the JSON Schema of one flow file (for editors' YAML language servers)."""
    from engine.flow.schema import json_schema

    click.echo(json.dumps(json_schema(file), indent=2, ensure_ascii=False))


def _register_subcommands() -> None:
    """Command groups live in their own modules (shared helpers are in ``engine.cli.common``)."""
    from engine.cli.capacity import capacity
    from engine.cli.chat import chat, demo
    from engine.cli.compliance import compliance
    from engine.cli.intents import intents
    from engine.cli.report import report
    from engine.cli.serve import serve
    from engine.cli.simulate import simulate
    from engine.cli.tune import tune

    for command in (chat, demo, capacity, compliance, intents, report, serve, simulate, tune):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
