"""Helpers shared by the CLI's command modules: consoles, exit-code-2 errors, flow loading."""

from __future__ import annotations

import click
from rich.console import Console

from engine.errors import FlowValidationError

console = Console()
DB_HELP = "SQLAlchemy URL of the conversation store."


def bounded_float_option(name: str, default: float, low: float, high: float, help: str):
    """A float option limited to [low, high] whose default shows in --help: a value out of
    range exits 2 with click's message naming the option."""
    return click.option(
        name, default=default, show_default=True, type=click.FloatRange(low, high), help=help
    )


def bounded_int_option(name: str, default: int, low: int, high: int, help: str):
    """The whole-number sibling of :func:`bounded_float_option` (seconds, counts)."""
    return click.option(
        name, default=default, show_default=True, type=click.IntRange(low, high), help=help
    )


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
