"""The report's conclusions in plain language, derived only from its own numbers."""

from __future__ import annotations

from engine.report.format import interval, pct, pts, pval
from engine.report.model import Comparison, Report


def primary_sentence(c: Comparison, alpha: float) -> str:
    label = c.label.lower()
    if c.diff is None:
        return f"{c.arm} and {c.control} cannot be compared on {label}: one arm has no calls."
    rates = f"{pct(c.value.rate)} vs {pct(c.control_value.rate)}"
    ci = f"{100 * (1 - alpha):g}% CI {interval(c.low, c.high, points=True)}"
    if c.significant:
        direction = "higher" if c.diff > 0 else "lower"
        return (
            f"{c.arm}'s {label} is {pts(abs(c.diff))} {direction} than {c.control}'s "
            f"({rates}; {ci}; p = {pval(c.p_value)}): a statistically significant difference "
            f"at the {alpha:g} level."
        )
    mde = f" This test could detect an increase of about {pts(c.mde)}." if c.mde else ""
    return (
        f"No significant difference in {label} between {c.arm} and {c.control} "
        f"({rates}; difference {pts(c.diff, signed=True)}, {ci}; p = {pval(c.p_value)}).{mde}"
    )


def secondary_sentence(report: Report) -> str:
    hits = [c for c in report.secondary if c.significant]
    if not report.secondary:
        return "No secondary metrics were tested."
    if not hits:
        return (
            f"None of the {len(report.secondary)} stage metrics differs significantly after "
            "Holm correction."
        )
    parts = ", ".join(
        f"{c.label.lower()} in {c.arm} ({pts(c.diff, signed=True)})" for c in hits[:6]
    )
    more = f" and {len(hits) - 6} more" if len(hits) > 6 else ""
    return f"Significant after Holm correction: {parts}{more}."


def summary(report: Report) -> list[str]:
    lines = []
    alarms = [h for h in report.health if h.status == "alarm"]
    if alarms:
        names = ", ".join(h.name.lower() for h in alarms)
        lines.append(f"Do not act on these results: health checks raised an alarm ({names}).")
    lines += [primary_sentence(c, report.alpha) for c in report.primary]
    lines.append(secondary_sentence(report))
    return lines
