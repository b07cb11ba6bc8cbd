"""The report's conclusions in plain language, derived only from its own numbers."""

from __future__ import annotations

from engine.report.format import interval, pct, pts, pval
from engine.report.model import Comparison, Report


def p_text(c: Comparison) -> str:
    """The p-value as every view prints it: the test's name, its p, and Holm's adjusted p when
    several treatment arms share the primary family."""
    name = "McNemar mid-p" if c.paired is not None else "z-test"
    text = f"{name} p = {pval(c.p_value)}"
    if c.primary and c.p_adjusted is not None:
        text += f", Holm-adjusted p = {pval(c.p_adjusted)}"
    return text


def paired_counts(c: Comparison) -> str:
    """How many customers decided a paired test: those who did better in one arm only."""
    t = c.paired
    if t is None:
        return ""
    return (
        f"; {t.only_a + t.only_b} of {t.pairs} customers counted in one arm only "
        f"({t.only_b} in {c.arm}, {t.only_a} in {c.control})"
    )


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
            f"({rates}; {ci}; {p_text(c)}{paired_counts(c)}): a statistically significant "
            f"difference at the {alpha:g} level."
        )
    mde = f" This test could detect an increase of about {pts(c.mde)}." if c.mde else ""
    if c.mde and c.paired is not None:
        mde = (
            f" Two independent samples of this size could detect an increase of about "
            f"{pts(c.mde)}; pairing by customer detects smaller ones when a customer's outcomes "
            "in the two arms go together."
        )
    return (
        f"No significant difference in {label} between {c.arm} and {c.control} "
        f"({rates}; difference {pts(c.diff, signed=True)}, {ci}; {p_text(c)}"
        f"{paired_counts(c)}).{mde}"
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
