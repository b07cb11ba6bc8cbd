"""Write a report as self-contained HTML (inline SVG charts, inline CSS, no JavaScript, no
network), Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from engine.report import charts
from engine.report.format import interval, ms, pct, pts, pval
from engine.report.model import Report
from engine.report.verdicts import p_text

TEMPLATES = Path(__file__).parent / "templates"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, pts=pts, pval=pval, ms=ms)
    return env


def _untested(report: Report):
    first = report.funnel[0].stage if report.funnel else None
    primary_stage = (
        report.primary_metric.split(":", 1)[1]
        if report.primary_metric.startswith("reach:")
        else None
    )

    def note(stage: str) -> str:
        if stage == first:
            return "first stage: every call reaches it"
        if stage == primary_stage or report.primary_metric == "close_rate":
            return "same as the primary metric"
        return "not tested"

    return note


def primary_method(report: Report) -> str:
    """One sentence naming the primary test, its interval and any multiplicity correction."""
    if report.paired:
        unit = "paired by customer: every simulated customer met every arm"
    else:
        unit = "independent samples (live traffic)"
    holm = (
        f"Holm-adjusted across the {len(report.primary)} treatment arms"
        if len(report.primary) > 1
        else "one treatment arm, not adjusted"
    )
    return (
        f"Test: {report.test}; interval: {report.interval_method}; {unit}; {holm}. "
        "Differences are treatment minus control."
    )


def methods(report: Report) -> str:
    """The Methods paragraph of the HTML and Markdown views, for this report's design."""
    if report.paired:
        tests = (
            "Differences: Newcombe's paired score interval (method 10, Stat Med 1998); tests: "
            "McNemar's mid-p test over the customers run in both arms (Fagerland, Lydersen and "
            "Laake 2013), since every simulated customer met every arm."
        )
        mde = (
            "Detectable increase: the two-sample approximation at the number of pairs (80% "
            "power, Cohen's h); pairing detects smaller differences when a customer's outcomes "
            "go together across arms."
        )
    else:
        tests = (
            "Differences: Newcombe hybrid score intervals; tests: two-sided pooled "
            "two-proportion z-tests (independent samples)."
        )
        mde = "Detectable increase: at 80% power (Cohen's h, normal approximation)."
    holm = (
        "Holm across the primary comparisons of the treatment arms and across the secondary "
        "metrics."
        if len(report.primary) > 1
        else "Holm across the secondary metrics; the single primary comparison is not adjusted."
    )
    return (
        f"Methods: Wilson intervals per arm. {tests} {holm} SRM chi-square (alarm at "
        f"p < 0.001). {mde} * = significant after adjustment."
    )


def render_html(report: Report) -> str:
    figures = {
        "funnel": charts.funnel_chart(report) if report.funnel else None,
        "difference": charts.difference_chart(report),
        "compliance": charts.compliance_chart(report),
        "latency": charts.latency_chart(report),
    }
    outcomes = sorted({o for a in report.arms for o in a.outcomes})
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            r=report,
            charts=figures,
            colours=charts.arm_colours(report),
            level=charts.level(report),
            alarm=any(h.status == "alarm" for h in report.health),
            comparison=report.comparison,
            interval=interval,
            untested=_untested(report),
            outcomes=outcomes,
            p_text=p_text,
            primary_method=primary_method(report),
            methods=methods(report),
        )
    )


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    level = charts.level(report)
    out = [f"# A/B report: {report.experiment}", ""]
    if report.description:
        out += [report.description, ""]
    meta = [f"control **{report.control}**", f"primary metric **{report.primary_label}**"]
    if report.run_id:
        meta.append(f"run `{report.run_id}`")
    meta += [f"alpha {report.alpha:g}", f"generated {report.generated_at}"]
    out += [" · ".join(meta), "", "## Summary", ""]
    out += [f"- {line}" for line in report.summary]
    out += ["", "## Health checks", ""]
    out.append(
        _table(
            ["Status", "Check", "Verdict"],
            [[h.status.upper(), h.name, h.verdict] for h in report.health],
        )
    )
    out += ["", "## Arms", ""]
    out.append(
        _table(
            ["Arm", "Mode", "Assigned", "Close rate", f"{level} CI", "Hang-up rate", "In progress"],
            [
                [
                    a.name + (" (control)" if a.name == report.control else ""),
                    a.mode,
                    f"{a.assigned:,}",
                    pct(a.closed.rate),
                    interval(a.closed.low, a.closed.high),
                    pct(a.hung_up.rate),
                    f"{a.active:,}",
                ]
                for a in report.arms
            ],
        )
    )
    out += ["", f"## Primary metric: {report.primary_label}", "", primary_method(report), ""]
    headers = ["Arm", report.control, "Arm", "Difference", f"{level} CI", "p"]
    headers += ["Discordant (arm / control)"] if report.paired else []
    headers += ["Detectable increase", "Verdict"]
    rows = []
    for c in report.primary:
        row = [
            c.arm,
            pct(c.control_value.rate),
            pct(c.value.rate),
            pts(c.diff, signed=True),
            interval(c.low, c.high, points=True),
            p_text(c),
        ]
        if report.paired:
            row.append(f"{c.paired.only_b} / {c.paired.only_a}" if c.paired else "–")
        row += [pts(c.mde), "significant" if c.significant else "not significant"]
        rows.append(row)
    out.append(_table(headers, rows))
    if report.methods:
        out += ["", "## How each arm decides, and how it is measured", ""]
        for text in report.methods.values():
            out += [text, ""]
        out.append(report.measurement)
    out += ["", "## Funnel (reached stage / assigned)", ""]
    headers = ["Stage"] + [f"{a.name} reached" for a in report.arms]
    headers += [f"{a.name} pass-through" for a in report.arms]
    for t in report.treatments:
        headers += [f"Δ {t}", f"{level} CI", "p", "p (Holm)"]
    rows = []
    for row in report.funnel:
        cells = [row.stage]
        cells += [
            f"{pct(row.arms[a.name].reached.rate)} ({row.arms[a.name].reached.count:,})"
            for a in report.arms
        ]
        cells += [pct(row.arms[a.name].pass_through) for a in report.arms]
        for t in report.treatments:
            c = report.comparison(f"reach:{row.stage}", t)
            if c is None:
                cells += ["–"] * 4
            else:
                cells += [
                    pts(c.diff, signed=True),
                    interval(c.low, c.high, points=True),
                    pval(c.p_value),
                    pval(c.p_adjusted) + (" *" if c.significant else ""),
                ]
        rows.append(cells)
    out.append(_table(headers, rows))
    out += ["", "## Secondary metrics (Holm-adjusted)", ""]
    out.append(
        _table(
            ["Metric", "Arm", report.control, "Arm", "Difference", f"{level} CI", "p", "p (Holm)"],
            [
                [
                    c.label,
                    c.arm,
                    pct(c.control_value.rate),
                    pct(c.value.rate),
                    pts(c.diff, signed=True),
                    interval(c.low, c.high, points=True),
                    pval(c.p_value),
                    pval(c.p_adjusted) + (" *" if c.significant else ""),
                ]
                for c in report.secondary
            ],
        )
    )
    out += ["", "## Compliance filter (per LLM turn)", ""]
    out.append(
        _table(
            ["Arm", "Stage", "LLM turns", "Calls", "Approved", "Fallback", "Universal"],
            [
                [
                    c.arm,
                    c.stage,
                    f"{c.turns:,}",
                    f"{c.calls:,}",
                    f"{c.approved + c.passed:,}",
                    pct(c.fallback.rate),
                    pct(c.universal.rate),
                ]
                for c in report.compliance
            ],
        )
    )
    out += ["", "## Process-order findings per arm", ""]
    out.append(
        _table(
            [
                "Arm",
                "Calls sent out of order",
                "Calls with a draft kept back",
                "Sent",
                "Kept back",
                "Most frequent",
            ],
            [
                [
                    p.arm,
                    f"{p.calls_sent.count:,} ({pct(p.calls_sent.rate)})",
                    f"{p.calls_attempted.count:,} ({pct(p.calls_attempted.rate)})",
                    f"{p.sent:,}",
                    f"{p.attempted:,}",
                    "; ".join(p.top) or "-",
                ]
                for p in report.process_order
            ],
        )
    )
    out += ["", "## Fallback wording: calls that continued after the variant", ""]
    out.append(
        _table(
            ["Arm", "Stage", "Variant", "Calls", "Continued", "Rate", f"{level} CI"],
            [
                [
                    v.arm,
                    v.stage,
                    v.variant,
                    f"{v.continued.n:,}",
                    f"{v.continued.count:,}",
                    pct(v.continued.rate),
                    interval(v.continued.low, v.continued.high),
                ]
                for v in report.variants
            ],
        )
    )
    if report.variant_tests:
        out += [""]
        out.append(
            _table(
                ["Arm", "Stage", "Variants", "p", "p (Holm)"],
                [
                    [t.arm, t.stage, ", ".join(t.variants), pval(t.p_value), pval(t.p_adjusted)]
                    for t in report.variant_tests
                ],
            )
        )
    out += ["", "## Latency per turn", ""]
    out.append(
        _table(
            ["Arm", "Source", "Turns", "p50", "p90", "p95", "p99"],
            [
                [t.arm, t.source, f"{t.n:,}", ms(t.p50), ms(t.p90), ms(t.p95), ms(t.p99)]
                for t in report.latency
            ],
        )
    )
    out += ["", methods(report), ""]
    return "\n".join(out)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.md and report.json into ``out_dir`` (created if needed)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "html": folder / "report.html",
        "md": folder / "report.md",
        "json": folder / "report.json",
    }
    paths["html"].write_text(render_html(report), encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return paths
