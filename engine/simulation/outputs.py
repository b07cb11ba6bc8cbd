"""What a simulation writes beside its A/B report: ``simulation.json`` (parameters and paired
tests) and ``simulation.md``, and the paired verdict in words that the terminal prints too.

Every number here is read from the report's primary comparisons (McNemar's mid-p test and
Newcombe's paired interval, computed once in :mod:`engine.report.build`) and formatted by the
report's own formatters, so report.html, report.md, report.json, simulation.md,
simulation.json and the terminal cannot give one run two verdicts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engine.report.format import interval, pct, pts
from engine.report.model import Comparison, Report
from engine.report.verdicts import p_text, primary_sentence


def paired_sentence(comparison: Comparison, alpha: float = 0.05) -> str:
    """The primary verdict in words, as the report's summary says it."""
    return primary_sentence(comparison, alpha)


def comparison_record(c: Comparison, report: Report) -> dict:
    """One primary comparison for simulation.json: the report's numbers, and the paired table."""
    return {
        "metric": c.metric,
        "arm": c.arm,
        "control": c.control,
        "test_name": report.test,
        "interval_method": report.interval_method,
        "diff": c.diff,
        "low": c.low,
        "high": c.high,
        "p_value": c.p_value,
        "p_adjusted": c.p_adjusted,
        "significant": c.significant,
        "test": asdict(c.paired) if c.paired is not None else None,
    }


def simulation_markdown(report: Report, params: dict, report_name: str) -> str:
    """simulation.md: the run's parameters and the primary test, beside the A/B report."""
    level = f"{100 * (1 - report.alpha):g}%"
    lines = [
        f"# Simulation {params['run_id']}",
        "",
        f"Experiment `{report.experiment}`, flow `{params['flow_version']}`, "
        f"personas `{params['population']}`; {params['n']} simulated customers, seed "
        f"{params['seed']}, each run in every arm (paired); LLM backend `{params['backend']}`, "
        f"embedder `{params['embedder']}`. Full A/B report: [{report_name}]({report_name}).",
        "",
        f"## Primary metric: {report.primary_label}",
        "",
        f"Test: {report.test}; interval: {report.interval_method}.",
        "",
        "| arm | control | pairs | arm rate | control rate | difference | "
        f"{level} CI | only arm | only control | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.primary:
        t = c.paired
        pairs, only_arm, only_control = (t.pairs, t.only_b, t.only_a) if t else ("–",) * 3
        lines.append(
            f"| {c.arm} | {c.control} | {pairs} | {pct(c.value.rate)} | "
            f"{pct(c.control_value.rate)} | {pts(c.diff, signed=True)} | "
            f"{interval(c.low, c.high, points=True)} | {only_arm} | {only_control} | "
            f"{p_text(c)} |"
        )
    failed = [h for h in report.health if h.status == "alarm"]
    lines += ["", *[paired_sentence(c, report.alpha) for c in report.primary], ""]
    if failed:
        lines += ["## Health alarms", "", *[f"- **{h.name}**: {h.verdict}" for h in failed], ""]
    return "\n".join(lines)


def write_simulation_files(folder: Path, report: Report, params: dict, report_name: str) -> None:
    """Write ``simulation.json`` and ``simulation.md`` into ``folder`` (the report's folder)."""
    paired = [comparison_record(c, report) for c in report.primary]
    (folder / "simulation.json").write_text(
        json.dumps({"params": params, "paired": paired}, indent=2) + "\n",
        encoding="utf-8",
    )
    (folder / "simulation.md").write_text(
        simulation_markdown(report, params, report_name), encoding="utf-8"
    )
