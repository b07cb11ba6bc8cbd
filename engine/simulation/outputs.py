"""What a simulation writes beside its A/B report: ``simulation.json`` (parameters and paired
tests) and ``simulation.md``, and the paired verdict in words that the terminal prints too."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def p_text(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def paired_sentence(comparison, label: str, alpha: float = 0.05) -> str:
    """The paired verdict in words: rates, discordant pairs and McNemar's p."""
    t = comparison.test
    verdict = "significant" if t.p_value < alpha else "not significant"
    return (
        f"{comparison.arm} vs {comparison.control}: {label.lower()} {percent(t.rate_b)} vs "
        f"{percent(t.rate_a)} ({points(t.diff)} pts); {t.only_a + t.only_b} discordant "
        f"customers ({t.only_b} closed only with {comparison.arm}, {t.only_a} only with "
        f"{comparison.control}); McNemar {t.method} p = {p_text(t.p_value)}: "
        f"{verdict} at {alpha:g}."
    )


def simulation_markdown(report, paired, params: dict, report_name: str) -> str:
    """simulation.md: the run's parameters and the paired test, beside the A/B report."""
    lines = [
        f"# Simulation {params['run_id']}",
        "",
        f"Experiment `{report.experiment}`, flow `{params['flow_version']}`, "
        f"personas `{params['population']}`; {params['n']} simulated customers, seed "
        f"{params['seed']}, each run in every arm (paired); LLM backend `{params['backend']}`, "
        f"embedder `{params['embedder']}`. Full A/B report: [{report_name}]({report_name}).",
        "",
        f"## Primary metric, paired by customer: {report.primary_label}",
        "",
        "| arm | control | pairs | arm rate | control rate | diff (pts) | only arm | only control"
        " | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in paired:
        t = c.test
        lines.append(
            f"| {c.arm} | {c.control} | {t.pairs} | {percent(t.rate_b)} | {percent(t.rate_a)}"
            f" | {points(t.diff)} | {t.only_b} | {t.only_a} | {p_text(t.p_value)}"
            f" ({t.method}) |"
        )
    lines += ["", *[paired_sentence(c, report.primary_label, report.alpha) for c in paired], ""]
    return "\n".join(lines)


def write_simulation_files(folder: Path, report, paired, params: dict, report_name: str) -> None:
    """Write ``simulation.json`` and ``simulation.md`` into ``folder`` (the report's folder)."""
    (folder / "simulation.json").write_text(
        json.dumps(
            {"params": params, "paired": [{**asdict(p), "test": asdict(p.test)} for p in paired]},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    (folder / "simulation.md").write_text(
        simulation_markdown(report, paired, params, report_name), encoding="utf-8"
    )
