"""Static charts as inline SVG (matplotlib, Agg backend): the report needs no network and no
JavaScript. Text stays text (``svg.fonttype: none``), so charts are small and crisp at any zoom,
and element ids are salted deterministically, so the same data gives the same bytes."""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from engine.report.format import ms  # noqa: E402
from engine.report.model import Report  # noqa: E402

PALETTE = ["#2563eb", "#ea580c", "#059669", "#7c3aed", "#db2777", "#0891b2"]
DECISION_COLOURS = {
    "approved": "#059669",
    "pass": "#0d9488",
    "fallback": "#f59e0b",
    "universal": "#dc2626",
}
INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
# Matplotlib 3.10 replaced bxp's ``vert`` with ``orientation`` (``vert`` warns from 3.11).
HORIZONTAL = (
    {"orientation": "horizontal"}
    if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)
WIDTH = 11.0  # inches; the SVG scales to the page, so this sets the text size relative to it
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "salesbot-report",
    "font.family": "DejaVu Sans",  # bundled with matplotlib: the same metrics everywhere
    "font.size": 10,
    "axes.edgecolor": GRID,
    "axes.labelcolor": INK,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": INK,
    "legend.frameon": False,
}


def arm_colours(report: Report) -> dict[str, str]:
    return {a.name: PALETTE[i % len(PALETTE)] for i, a in enumerate(report.arms)}


def legend_above(ax: Axes, handles: list, columns: int | None = None) -> None:
    """A one-line legend above the plot, where it never hides data."""
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0, 1.01),
        ncols=columns or len(handles),
        borderaxespad=0,
        handlelength=1.2,
        columnspacing=1.6,
    )


def arm_patches(report: Report) -> list[Patch]:
    return [Patch(color=colour, label=arm) for arm, colour in arm_colours(report).items()]


def level(report: Report) -> str:
    return f"{100 * (1 - report.alpha):g}%"


def to_svg(fig: Figure, css_class: str) -> str:
    """The figure as an inline <svg> element that scales to its container."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", transparent=True)
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'\s(width|height)="[^"]*pt"', "", svg, count=2)
    return svg.replace("<svg", f'<svg class="chart {css_class}" role="img"', 1)


def funnel_chart(report: Report) -> str:
    """Share of assigned calls reaching each stage, per arm, with Wilson intervals."""
    colours = arm_colours(report)
    stages = [row.stage for row in report.funnel]
    arms = [a.name for a in report.arms]
    bar = 0.8 / max(len(arms), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH, 0.5 * len(stages) * max(len(arms), 2) / 2 + 1.3))
        for j, arm in enumerate(arms):
            ys = [i + (j - (len(arms) - 1) / 2) * bar for i in range(len(stages))]
            cells = [row.arms[arm].reached for row in report.funnel]
            rates = [(c.rate or 0.0) * 100 for c in cells]
            pairs = list(zip(rates, cells, strict=True))
            lows = [max(r - c.low * 100, 0.0) if c.rate is not None else 0.0 for r, c in pairs]
            highs = [max(c.high * 100 - r, 0.0) if c.rate is not None else 0.0 for r, c in pairs]
            ax.barh(ys, rates, height=bar * 0.9, color=colours[arm], label=arm)
            ax.errorbar(
                rates, ys, xerr=[lows, highs], fmt="none", ecolor=INK, elinewidth=1, capsize=2.5
            )
            for y, r, h in zip(ys, rates, highs, strict=True):
                ax.text(r + h + 1.2, y, f"{r:.1f}%", va="center", fontsize=8.5, color=INK)
        ax.set_yticks(range(len(stages)), stages)
        ax.invert_yaxis()
        ax.set_xlim(0, 112)
        ax.set_xticks(range(0, 101, 20), [f"{t}%" for t in range(0, 101, 20)])
        ax.xaxis.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_xlabel(
            f"calls that reached the stage, % of assigned ({level(report)} Wilson interval)"
        )
        legend_above(ax, arm_patches(report))
        return to_svg(fig, "funnel-chart")


def difference_chart(report: Report) -> str | None:
    """Forest plot: treatment minus control per metric, with the report's interval (Newcombe,
    paired or two-sample); filled markers are significant (after Holm where it applies)."""
    if not report.treatments:
        return None
    colours = arm_colours(report)
    comparisons = [c for c in [*report.primary, *report.secondary] if c.diff is not None]
    if not comparisons:
        return None
    labels = list(dict.fromkeys(c.label + (" (primary)" if c.primary else "") for c in comparisons))
    arms = report.treatments
    step = 0.7 / max(len(arms), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH, 0.4 * len(labels) * max(len(arms), 1) + 1.3))
        for j, arm in enumerate(arms):
            for c in comparisons:
                if c.arm != arm:
                    continue
                i = labels.index(c.label + (" (primary)" if c.primary else ""))
                y = i + (j - (len(arms) - 1) / 2) * step
                colour = colours[arm]
                ax.plot([c.low * 100, c.high * 100], [y, y], color=colour, linewidth=2)
                ax.plot(
                    c.diff * 100,
                    y,
                    "o",
                    markersize=7,
                    markeredgecolor=colour,
                    markerfacecolor=colour if c.significant else "white",
                    markeredgewidth=1.8,
                )
        ax.axvline(0, color=MUTED, linewidth=1, linestyle="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.xaxis.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.set_xlabel(
            f"difference in percentage points ({level(report)} {report.interval_method} "
            "interval); filled = significant"
        )
        handles = [
            Line2D([], [], color=colours[arm], marker="o", label=f"{arm} − {report.control}")
            for arm in arms
        ]
        handles += [
            Line2D([], [], color=MUTED, marker="o", linestyle="", label="significant"),
            Line2D(
                [],
                [],
                color=MUTED,
                marker="o",
                markerfacecolor="white",
                linestyle="",
                label="not significant",
            ),
        ]
        legend_above(ax, handles)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        return to_svg(fig, "difference-chart")


def compliance_chart(report: Report) -> str | None:
    """What the compliance filter did with the LLM's drafts, per arm and stage."""
    rows = [r for r in report.compliance if r.turns]
    if not rows:
        return None
    labels = [f"{r.arm} · {r.stage}" for r in rows]
    parts = {
        "approved": [r.approved / r.turns * 100 for r in rows],
        "pass": [r.passed / r.turns * 100 for r in rows],
        "fallback": [r.fallback.count / r.turns * 100 for r in rows],
        "universal": [r.universal.count / r.turns * 100 for r in rows],
    }
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH, 0.36 * len(rows) + 1.3))
        left = [0.0] * len(rows)
        for name, values in parts.items():
            if not any(values):
                continue
            ax.barh(labels, values, left=left, color=DECISION_COLOURS[name], label=name, height=0.7)
            for i, v in enumerate(values):
                if v >= 7:
                    ax.text(
                        left[i] + v / 2,
                        i,
                        f"{v:.0f}%",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white",
                    )
            left = [a + b for a, b in zip(left, values, strict=True)]
        for i, r in enumerate(rows):
            ax.text(101, i, f"n={r.turns:,}", va="center", fontsize=8, color=MUTED)
        ax.invert_yaxis()
        ax.set_xlim(0, 112)
        ax.set_xticks(range(0, 101, 20), [f"{t}%" for t in range(0, 101, 20)])
        ax.set_xlabel("share of LLM drafts by compliance decision")
        legend_above(
            ax, [Patch(color=DECISION_COLOURS[k], label=k) for k in parts if any(parts[k])]
        )
        return to_svg(fig, "compliance-chart")


def latency_chart(report: Report) -> str | None:
    """Per-turn latency by reply source and arm: box = quartiles, whiskers = 5th-95th pct."""
    colours = arm_colours(report)
    rows = [r for r in report.latency if r.n and r.p50 is not None]
    if not rows:
        return None
    sources = list(dict.fromkeys(r.source for r in rows))
    arms = [a.name for a in report.arms]
    step = 0.8 / max(len(arms), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH, 0.45 * len(sources) * max(len(arms), 2) / 2 + 1.3))
        for r in rows:
            j = arms.index(r.arm)
            y = sources.index(r.source) + (j - (len(arms) - 1) / 2) * step
            floor = 0.01  # log scale: a 0 ms turn is drawn at 0.01 ms
            box = {
                "whislo": max(r.p5, floor),
                "q1": max(r.p25, floor),
                "med": max(r.p50, floor),
                "q3": max(r.p75, floor),
                "whishi": max(r.p95, floor),
                "fliers": [],
            }
            artists = ax.bxp(
                [box],
                positions=[y],
                widths=step * 0.8,
                **HORIZONTAL,
                showfliers=False,
                patch_artist=True,
                manage_ticks=False,
            )
            for patch in artists["boxes"]:
                patch.set(facecolor=colours[r.arm], alpha=0.85, edgecolor=INK, linewidth=0.8)
            for key in ("whiskers", "caps"):
                for line in artists[key]:
                    line.set(color=INK, linewidth=0.8)
            for line in artists["medians"]:
                line.set(color="white", linewidth=1.6)
            ax.text(
                max(r.p95, floor) * 1.15,
                y,
                f"p50 {ms(r.p50)}",
                va="center",
                fontsize=8,
                color=MUTED,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(sources)), sources)
        ax.invert_yaxis()
        ax.xaxis.grid(True, which="major", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel("turn latency, ms (log scale; box = quartiles, whiskers = 5th–95th pct)")
        legend_above(ax, arm_patches(report))
        return to_svg(fig, "latency-chart")
