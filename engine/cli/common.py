"""Helpers shared by the CLI's command modules: consoles, exit-code-2 errors, flow loading."""

from __future__ import annotations

import click
from rich.console import Console

from engine.errors import FlowValidationError

console = Console()
DB_HELP = "SQLAlchemy URL of the conversation store."


class ConfigError(click.ClickException):
    """A configuration problem: printed without a traceback, exit code 2."""

    exit_code = 2


def _load_flow_or_exit(flow_dir: str):
    from engine.flow.loader import load_flow

    try:
        return load_flow(flow_dir)
    except FlowValidationError as exc:
        raise ConfigError(str(exc)) from None


def _parse_slots(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--slot expects NAME=VALUE, got {pair!r}")
        values[name] = value
    return values
