"""`salesbot report`: the A/B report of one experiment, from the conversation store.

A thin layer over :mod:`engine.report`: parse, build, write, print where the files went.
Configuration problems (no such database, no such experiment) exit with code 2.
"""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from engine.cli.common import bounded_float_option
from engine.errors import SalesbotError


class ReportConfigError(click.ClickException):
    exit_code = 2


def _check_url(db: str) -> None:
    try:
        url = make_url(db)
        url.get_dialect().import_dbapi()  # the driver is installed
    except (ArgumentError, ImportError) as exc:
        raise ReportConfigError(f"--db: not a usable database URL: {db!r} ({exc})") from None
    if url.get_backend_name() == "sqlite":
        path = url.database
        if path and path != ":memory:" and not Path(path).is_file():
            raise ReportConfigError(f"--db: no SQLite database at {path}")


@click.command()
@click.option("--db", required=True, help="SQLAlchemy URL of the conversation store.")
@click.option("--experiment", required=True, help="Experiment name (experiments.yaml).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (created if missing).",
)
@click.option("--run-id", default=None, help="Only the conversations of this simulation run.")
@bounded_float_option(
    "--alpha", 0.05, 0.0001, 0.5, help="Significance level; intervals are at 1 - alpha."
)
def report(db: str, experiment: str, out_dir: str, run_id: str | None, alpha: float) -> None:
    """Write report.html, report.md and report.json for one experiment."""
    from engine.report import build_report, write_report

    _check_url(db)
    try:
        built = build_report(db, experiment, run_id=run_id, alpha=alpha)
    except SalesbotError as exc:
        raise ReportConfigError(str(exc)) from None
    except OperationalError as exc:
        raise ReportConfigError(f"--db: cannot read the database: {exc.orig}") from None
    paths = write_report(built, out_dir)
    for line in built.summary:
        click.echo(line)
    for check in built.health:
        if check.status != "ok":
            click.echo(f"[{check.status}] {check.name}: {check.verdict}")
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
