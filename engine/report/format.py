"""Number formatting shared by the HTML, Markdown and plain-language views."""

from __future__ import annotations


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def pts(value: float | None, digits: int = 1, signed: bool = False) -> str:
    """A difference of proportions in percentage points."""
    if value is None:
        return "–"
    sign = "+" if signed and value > 0 else ""
    text = f"{sign}{value * 100:.{digits}f} pts"
    return text.replace("-", "−")


def pval(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 0.0001:
        return "< 0.0001"
    return f"{value:.4f}" if value < 0.01 else f"{value:.3f}"


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def interval(low: float | None, high: float | None, points: bool = False) -> str:
    if low is None or high is None:
        return "–"
    if points:
        return f"{pts(low, signed=True).replace(' pts', '')} to {pts(high, signed=True)}"
    return f"{low * 100:.1f}–{high * 100:.1f}%"
