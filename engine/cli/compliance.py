"""`salesbot compliance calibrate|eval`: thresholds from labelled drafts, and how good they are.

A thin layer over :mod:`engine.compliance.calibration`: parse, call, print. Bad flows, bad pairs
files and unknown embedders exit with code 2 and the file/line/field of each problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engine.cli.common import bounded_float_option
from engine.errors import SalesbotError

console = Console(width=max(Console().width, 110))


def _fail(message: str) -> click.ClickException:
    from engine.cli.common import ConfigError

    return ConfigError(message)


def _prepare(flow_dir: str, pairs_file: str, embedder_name: str | None, slots: tuple[str, ...]):
    """Load the flow and the pairs, build the filter, match every pair once."""
    from engine.cli.common import _load_flow_or_exit, _parse_slots
    from engine.compliance import ComplianceFilter, create_embedder
    from engine.compliance.calibration import load_pairs, score_pairs, session_slots

    flow = _load_flow_or_exit(flow_dir)
    try:
        pairs = load_pairs(pairs_file, flow)
        embedder = create_embedder(embedder_name or flow.embedder)
        with console.status(f"Indexing {len(flow.scripts)} scripts and {len(pairs)} drafts..."):
            flt = ComplianceFilter(flow, embedder)
            scored = score_pairs(flt, pairs, session_slots(flow, _parse_slots(slots)))
    except SalesbotError as exc:
        raise _fail(str(exc)) from None
    return flow, embedder, scored


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _auroc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


FLOW_ARG = click.argument("flow_dir", type=click.Path())
PAIRS_OPT = click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(),
    help="CSV with columns stage,label,category,text (label: script id(s) joined by |, or none).",
)
EMBEDDER_OPT = click.option(
    "--embedder", default=None, help="Embedder to use instead of the flow's own."
)
SLOT_OPT = click.option(
    "--slot", "slots", multiple=True, metavar="NAME=VALUE", help="Slot value (repeatable)."
)


@click.group()
def compliance() -> None:
    """Calibrate and evaluate the compliance filter on labelled LLM drafts."""


@compliance.command()
@FLOW_ARG
@PAIRS_OPT
@EMBEDDER_OPT
@SLOT_OPT
@bounded_float_option(
    "--max-false-accept",
    0.05,
    0,
    1,
    help="Risk budget: highest share of must-fall-back drafts that may be accepted.",
)
@click.option(
    "--margins",
    default=None,
    metavar="M1,M2,...",
    help="Top-two margins to sweep as well (e.g. 0,0.02,0.04); default: each stage's own.",
)
@click.option(
    "--out",
    default="compliance-calibration",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the plot (PNG) and the full sweep (JSON).",
)
def calibrate(
    flow_dir: str,
    pairs_file: str,
    embedder: str | None,
    slots: tuple[str, ...],
    max_false_accept: float,
    margins: str | None,
    out: str,
) -> None:
    """Sweep the threshold per stage: fallback rate against false acceptance; propose thresholds."""
    from engine.compliance.calibration import plot, sweep

    try:
        margin_grid = [float(m) for m in margins.split(",")] if margins else None
    except ValueError:
        raise click.BadParameter(f"expected numbers joined by commas, got {margins!r}") from None
    if margin_grid and not all(0 <= m <= 1 for m in margin_grid):
        raise click.BadParameter("margins must be between 0 and 1")
    flow, used, scored = _prepare(flow_dir, pairs_file, embedder, slots)
    sweeps = sweep(scored, flow, max_false_accept=max_false_accept, margins=margin_grid)
    for sw in sweeps:
        table = Table(title=f"{flow.name} / {sw.stage} ({used.name}, margin {sw.margin:g})")
        for column in ("threshold", "fallback", "false accept", "wrong script", "accuracy"):
            table.add_column(column, justify="right")
        marks = {sw.proposed: "proposed", sw.best_accuracy: "best acc."}
        if sw.margin == sw.current_margin:
            marks = {sw.current: "current", **marks}
        for t, m in sw.rows:
            note = " ".join(name for value, name in marks.items() if value == t)
            if round(t * 100) % 5 and not note:
                continue
            label = f"{t:.2f}" + (f" ({note})" if note else "")
            cells = (_pct(m.fallback), _pct(m.false_accept), _pct(m.wrong_script), _pct(m.accuracy))
            table.add_row(label, *cells, style="bold" if note else None)
        console.print(table)
        if len(sw.by_margin) > 1:
            margins_table = Table(title=f"{sw.stage}: lowest threshold within budget, per margin")
            for column in ("margin", "threshold", "fallback", "false accept", "accuracy"):
                margins_table.add_column(column, justify="right")
            for margin_value, threshold, at in sw.by_margin:
                cells = (
                    ("-", "-", "-", "-")
                    if at is None
                    else (
                        f"{threshold:.2f}",
                        _pct(at.fallback),
                        _pct(at.false_accept),
                        _pct(at.accuracy),
                    )
                )
                margins_table.add_row(f"{margin_value:g}", *cells)
            console.print(margins_table)
    summary = Table(title=f"Proposal (false accept <= {_pct(max_false_accept)}, fewest fallbacks)")
    columns = ("stage", "drafts", "none", "now", "proposed", "fallback", "false accept", "AUROC")
    for column in columns:
        summary.add_column(column, justify="right")
    for sw in sweeps:
        at = dict(sw.rows).get(sw.proposed) if sw.proposed is not None else None
        first = sw.rows[0][1]
        summary.add_row(
            sw.stage,
            str(first.n),
            str(first.none),
            f"{sw.current:.2f} / {sw.current_margin:g}",
            "none within budget" if sw.proposed is None else f"{sw.proposed:.2f} / {sw.margin:g}",
            _pct(at.fallback) if at else "-",
            _pct(at.false_accept) if at else "-",
            _auroc(first.auroc),
        )
    console.print(summary)
    stem = Path(out) / f"{flow.name}-{used.name}"
    png = plot(sweeps, stem.with_suffix(".png"), f"{flow.name}: threshold sweep ({used.name})")
    report = {
        "flow": flow.name,
        "flow_version": flow.version,
        "library_hash": flow.library_hash,
        "embedder": used.name,
        "pairs": str(pairs_file),
        "max_false_accept": max_false_accept,
        "stages": [sw.as_dict() for sw in sweeps],
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    console.print(f"plot: {png}\nsweep: {stem.with_suffix('.json')}")
    proposed = [sw for sw in sweeps if sw.proposed is not None]
    if proposed:
        console.print("\nflow.yaml (stages.<stage>.compliance):")
        for sw in proposed:
            line = f"  {sw.stage}: {{threshold: {sw.proposed:.2f}, margin: {sw.margin:g}}}"
            console.print(line, markup=False)


@compliance.command(name="eval")
@FLOW_ARG
@PAIRS_OPT
@EMBEDDER_OPT
@SLOT_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(
    flow_dir: str, pairs_file: str, embedder: str | None, slots: tuple[str, ...], as_json: bool
) -> None:
    """Accuracy, false-accept rate and AUROC at the flow's own thresholds and margins."""
    from dataclasses import asdict

    from engine.compliance.calibration import breakdown, decided_metrics

    flow, used, scored = _prepare(flow_dir, pairs_file, embedder, slots)
    overall = decided_metrics(scored, flow)
    stages = breakdown(scored, flow, "stage")
    categories = breakdown(scored, flow, "category")
    if as_json:
        report = {
            "flow": flow.name,
            "embedder": used.name,
            "overall": asdict(overall),
            "stages": {k: asdict(v) for k, v in stages.items()},
            "categories": {k: asdict(v) for k, v in categories.items()},
        }
        click.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"{flow.name}: compliance decisions on {pairs_file} ({used.name})")
    columns = ("", "drafts", "accuracy", "false accept", "wrong script", "fallback", "AUROC")
    for column in columns:
        table.add_column(column, justify="right")
    rows = [("all", overall)]
    rows += [(f"stage {k}", v) for k, v in stages.items()]
    rows += [(f"category {k}", v) for k, v in categories.items()]
    for name, m in rows:
        table.add_row(
            name,
            f"{m.n} ({m.none} none)",
            _pct(m.accuracy),
            _pct(m.false_accept) if m.none else "-",
            _pct(m.wrong_script) if m.labelled else "-",
            _pct(m.fallback) if m.labelled else "-",
            _auroc(m.auroc),
        )
    console.print(table)
