"""Turn the stored conversations of one experiment into a :class:`Report`.

The design (control arm, weights, primary metric, funnel, success and hang-up outcomes) is read
from the assignment records in the database, so a report needs nothing but the database; runs
without an experiments.yaml fall back to defaults and order the funnel from the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from engine.errors import SalesbotError
from engine.experiments import MODES
from engine.report import health, stats
from engine.report.methods import ARM_METHODS, MEASUREMENT
from engine.report.model import (
    ArmSummary,
    Comparison,
    ComplianceRow,
    LatencyRow,
    ProcessOrderRow,
    Report,
    StageCell,
    StageRow,
    VariantRow,
    VariantTest,
)
from engine.report.verdicts import summary
from storage import Store
from storage import funnel as funnel_sql


class ReportError(SalesbotError):
    """Nothing to report (unknown experiment, no conversations)."""


def build_report(
    source: Store | str,
    experiment: str,
    *,
    run_id: str | None = None,
    alpha: float = stats.ALPHA,
) -> Report:
    """Analyse one experiment (optionally one simulation run) from the conversation store."""
    store = Store(source) if isinstance(source, str) else source
    try:
        return _build(store, experiment, run_id, alpha)
    finally:
        if isinstance(source, str):
            store.close()


def _build(store: Store, experiment: str, run_id: str | None, alpha: float) -> Report:
    with funnel_sql.reading(store) as conn:  # one snapshot for every number
        return _analyse(store, conn, experiment, run_id, alpha)


def _analyse(
    store: Store, bind: Connection, experiment: str, run_id: str | None, alpha: float
) -> Report:
    seen = funnel_sql.designs(bind, experiment, run_id)
    if not seen:
        known = funnel_sql.experiments_in(bind, run_id)
        listing = ", ".join(f"{k} ({v})" for k, v in known.items()) or "none"
        where = f" in run {run_id!r}" if run_id else ""
        raise ReportError(
            f"no conversations for experiment {experiment!r}{where}; experiments stored: {listing}"
        )
    record = seen[0].record
    design: dict[str, Any] = dict(record.get("design") or {})
    success = list(design.get("success_outcomes") or ["converted"])
    hangup = list(design.get("hangup_outcomes") or ["hung_up"])
    counts = funnel_sql.collect(
        bind, experiment, run_id=run_id, success_outcomes=success, hangup_outcomes=hangup
    )
    weights: dict[str, float] = dict(design.get("weights") or {})
    arm_names = list(weights) + [a for a in counts.arms if a not in weights]
    control = design.get("control") or ("hybrid" if "hybrid" in arm_names else arm_names[0])
    arm_names.remove(control)
    arm_names.insert(0, control)
    modes = dict(design.get("modes") or {})
    primary_metric = design.get("primary_metric") or "close_rate"
    stages = _funnel_stages(design.get("funnel"), counts)

    arms = [_arm_summary(name, counts, weights, modes, alpha) for name in arm_names]
    funnel_rows = _funnel_rows(stages, arms, counts, alpha)
    treatments = arm_names[1:]
    # A simulation run (conversations carry its run id) meets every customer in every arm: the
    # arms are compared customer by customer. Live traffic: two independent samples.
    units = None
    if run_id is not None:
        units = _units_by_customer(
            funnel_sql.unit_outcomes(
                bind, experiment, run_id=run_id, success_outcomes=success, hangup_outcomes=hangup
            )
        )
    primary = [
        _compare(primary_metric, arm, control, counts, alpha, primary=True, units=units)
        for arm in treatments
    ]
    if len(primary) > 1:  # several treatment arms: Holm across the primary comparisons
        for c, adjusted in zip(primary, stats.holm([c.p_value for c in primary]), strict=True):
            c.p_adjusted = adjusted
            c.significant = adjusted is not None and adjusted < alpha
    secondary_metrics = _secondary_metrics(stages, primary_metric, counts)
    secondary = [
        _compare(metric, arm, control, counts, alpha, units=units)
        for arm in treatments
        for metric in secondary_metrics
    ]
    for c, adjusted in zip(secondary, stats.holm([c.p_value for c in secondary]), strict=True):
        c.p_adjusted = adjusted
        c.significant = adjusted is not None and adjusted < alpha
    variants, variant_tests = _variants(counts, alpha)
    report = Report(
        experiment=experiment,
        description=str(design.get("description") or ""),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run_id=run_id,
        database=store.dialect,
        flows=counts.flows,
        design={
            **design,
            "seed": record.get("seed"),
            "hash_version": record.get("hash_version"),
            "scheme": record.get("scheme"),
            "definitions_seen": {d.definition or "(none)": d.conversations for d in seen},
        },
        control=control,
        alpha=alpha,
        primary_metric=primary_metric,
        primary_label=metric_label(primary_metric),
        arms=arms,
        funnel=funnel_rows,
        primary=primary,
        secondary=secondary,
        compliance=_compliance(counts, arm_names, alpha),
        variants=variants,
        variant_tests=variant_tests,
        latency=_latency(counts, arm_names),
        health=[],
        summary=[],
        paired=units is not None,
        test=stats.PAIRED_TEST if units is not None else stats.TWO_SAMPLE_TEST,
        interval_method=(stats.PAIRED_INTERVAL if units is not None else stats.TWO_SAMPLE_INTERVAL),
        process_order=_process_order(counts, arm_names, alpha),
        methods={m: ARM_METHODS[m] for m in dict.fromkeys(_modes(arms)) if m in ARM_METHODS},
        measurement=MEASUREMENT,
    )
    rows = funnel_sql.assignment_rows(bind, experiment, run_id)
    report.health = health.checks(report, counts, seen, rows)
    report.summary = summary(report)
    return report


def metric_label(metric: str) -> str:
    if metric == "close_rate":
        return "Close rate"
    if metric == "hangup_rate":
        return "Hang-up rate"
    if metric.startswith("reach:"):
        return f"Reached {metric.split(':', 1)[1]}"
    return metric


def _count(metric: str, arm: str, counts: funnel_sql.FunnelCounts) -> int:
    if metric == "close_rate":
        return counts.successes.get(arm, 0)
    if metric == "hangup_rate":
        return counts.hangups.get(arm, 0)
    if metric.startswith("reach:"):
        return counts.reached.get(arm, {}).get(metric.split(":", 1)[1], 0)
    raise ReportError(f"unknown metric {metric!r}")


Units = dict[str, dict[str, funnel_sql.UnitOutcome]]


def _units_by_customer(rows: list[funnel_sql.UnitOutcome]) -> Units:
    """customer id -> arm -> that customer's conversation in the arm."""
    out: Units = {}
    for row in rows:
        out.setdefault(row.customer_id, {})[row.arm] = row
    return out


def _hit(metric: str, unit: funnel_sql.UnitOutcome) -> bool:
    """Whether one conversation counts for ``metric`` (as :func:`_count` counts an arm)."""
    if metric == "close_rate":
        return unit.succeeded
    if metric == "hangup_rate":
        return unit.hung_up
    if metric.startswith("reach:"):
        return metric.split(":", 1)[1] in unit.stages
    raise ReportError(f"unknown metric {metric!r}")


def _compare_paired(
    metric: str, arm: str, control: str, units: Units, alpha: float, primary: bool
) -> Comparison:
    """McNemar's mid-p test and Newcombe's paired interval over the customers run in both arms
    (every customer of a finished simulation)."""
    pairs = [(v[control], v[arm]) for v in units.values() if control in v and arm in v]
    before = [_hit(metric, c) for c, _ in pairs]
    after = [_hit(metric, t) for _, t in pairs]
    test = stats.mcnemar_paired(before, after, alpha=alpha)
    return _comparison(
        metric,
        arm,
        control,
        (sum(before), len(pairs), sum(after), len(pairs)),
        test,
        test.p_value if pairs else None,
        alpha,
        primary,
    )


def _compare(
    metric: str,
    arm: str,
    control: str,
    counts: funnel_sql.FunnelCounts,
    alpha: float,
    *,
    primary: bool = False,
    units: Units | None = None,
) -> Comparison:
    if units is not None:
        return _compare_paired(metric, arm, control, units, alpha, primary)
    n1, n0 = counts.assigned.get(arm, 0), counts.assigned.get(control, 0)
    c1, c0 = _count(metric, arm, counts), _count(metric, control, counts)
    diff = stats.compare(c1, n1, c0, n0, alpha)
    return _comparison(
        metric,
        arm,
        control,
        (c0, n0, c1, n1),
        diff,
        diff.p_value,
        alpha,
        primary,
    )


def _comparison(
    metric: str,
    arm: str,
    control: str,
    counts: tuple[int, int, int, int],
    test: stats.Difference | stats.Paired,
    p_value: float | None,
    alpha: float,
    primary: bool,
) -> Comparison:
    """What the paired and the two-sample comparison fill in alike. ``counts``: successes and
    units in the control arm, then in ``arm``; ``p_value``: the test's (None without units).
    The MDE (primary metric only) is the two-sample approximation for both (see Methods)."""
    c0, n0, c1, n1 = counts
    control_value = stats.wilson(c0, n0, alpha)
    mde = None
    if primary and control_value.rate is not None:
        mde = stats.minimum_detectable_effect(control_value.rate, n0, n1, alpha)
    return Comparison(
        metric=metric,
        label=metric_label(metric),
        arm=arm,
        control=control,
        control_value=control_value,
        value=stats.wilson(c1, n1, alpha),
        diff=test.diff,
        low=test.low,
        high=test.high,
        p_value=p_value,
        p_adjusted=None,
        significant=primary and p_value is not None and p_value < alpha,
        primary=primary,
        mde=mde,
        paired=test if isinstance(test, stats.Paired) else None,
    )


def _funnel_stages(declared: Sequence[str] | None, counts: funnel_sql.FunnelCounts) -> list[str]:
    if declared:
        return list(declared)
    live = [s for s in counts.stage_order if s not in counts.terminal_stages]
    wins = [s for s in counts.stage_order if s in counts.success_stages]
    return live + wins


def _secondary_metrics(
    stages: list[str], primary_metric: str, counts: funnel_sql.FunnelCounts
) -> list[str]:
    """Stage reach rates (after the first stage, which every call reaches) and the hang-up and
    close rates, minus the primary metric and any stage identical to it."""
    metrics = [f"reach:{s}" for s in stages[1:]] + ["close_rate", "hangup_rate"]
    success_reach = {f"reach:{s}" for s in stages if s in counts.success_stages}
    drop = {primary_metric} | success_reach
    if primary_metric in success_reach:
        drop.add("close_rate")
    return [m for m in metrics if m not in drop]


def _arm_summary(
    name: str,
    counts: funnel_sql.FunnelCounts,
    weights: dict[str, float],
    modes: dict[str, str],
    alpha: float,
) -> ArmSummary:
    n = counts.assigned.get(name, 0)
    return ArmSummary(
        name=name,
        mode=modes.get(name) or (name if name in MODES else "unknown"),
        weight=weights.get(name),
        assigned=n,
        active=counts.active.get(name, 0),
        closed=stats.wilson(counts.successes.get(name, 0), n, alpha),
        hung_up=stats.wilson(counts.hangups.get(name, 0), n, alpha),
        outcomes=dict(sorted(counts.outcomes.get(name, {}).items())),
    )


def _funnel_rows(
    stages: list[str], arms: list[ArmSummary], counts: funnel_sql.FunnelCounts, alpha: float
) -> list[StageRow]:
    rows = []
    for i, stage in enumerate(stages):
        cells = {}
        for arm in arms:
            reached = counts.reached.get(arm.name, {}).get(stage, 0)
            previous = counts.reached.get(arm.name, {}).get(stages[i - 1], 0) if i else 0
            cells[arm.name] = StageCell(
                reached=stats.wilson(reached, arm.assigned, alpha),
                pass_through=reached / previous if i and previous else None,
            )
        rows.append(StageRow(stage, cells))
    return rows


def _compliance(
    counts: funnel_sql.FunnelCounts, arms: list[str], alpha: float
) -> list[ComplianceRow]:
    rows = []
    for arm in arms:
        for stage, decisions in sorted(counts.compliance.get(arm, {}).items()):
            n = sum(decisions.values())
            rows.append(
                ComplianceRow(
                    arm=arm,
                    stage=stage,
                    turns=n,
                    calls=counts.compliance_calls.get(arm, {}).get(stage, 0),
                    approved=decisions.get("approved", 0),
                    passed=decisions.get("pass", 0),
                    fallback=stats.wilson(decisions.get("fallback", 0), n, alpha),
                    universal=stats.wilson(decisions.get("universal", 0), n, alpha),
                )
            )
    return rows


def _process_order(
    counts: funnel_sql.FunnelCounts, arms: list[str], alpha: float
) -> list[ProcessOrderRow]:
    return [_process_order_row(counts, arm, alpha) for arm in arms]


def _process_order_row(counts: funnel_sql.FunnelCounts, arm: str, alpha: float) -> ProcessOrderRow:
    """One arm's process-order findings: call rates with intervals, the three scripts most often
    said out of order."""
    found = counts.findings.get(arm, {})
    n = counts.assigned.get(arm, 0)
    scripts = counts.findings_by_script.get(arm, {})
    top = sorted(scripts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return ProcessOrderRow(
        arm=arm,
        calls_sent=stats.wilson(found.get("calls_sent", 0), n, alpha),
        calls_attempted=stats.wilson(found.get("calls_attempted", 0), n, alpha),
        sent=found.get("sent", 0),
        attempted=found.get("attempted", 0),
        top=[f"{key} ({count})" for key, count in top],
    )


def _modes(arms: list[ArmSummary]) -> list[str]:
    return [a.mode or a.name for a in arms]


def _variants(
    counts: funnel_sql.FunnelCounts, alpha: float
) -> tuple[list[VariantRow], list[VariantTest]]:
    rows = [
        VariantRow(v.arm, v.stage, v.variant, stats.wilson(v.continued, v.calls, alpha))
        for v in counts.variants
    ]
    groups: dict[tuple[str, str], list[VariantRow]] = {}
    for row in rows:
        groups.setdefault((row.arm, row.stage), []).append(row)
    tests = []
    for (arm, stage), members in groups.items():
        if len(members) < 2:
            continue
        table = [[r.continued.count, r.continued.n - r.continued.count] for r in members]
        p = stats.chi_square_independence(table)
        tests.append(VariantTest(arm, stage, [r.variant for r in members], p, None))
    for test, adjusted in zip(tests, stats.holm([t.p_value for t in tests]), strict=True):
        test.p_adjusted = adjusted
    return rows, tests


SOURCES = ("script", "llm", "fallback", "universal")
PERCENTILES = (5, 25, 50, 75, 90, 95, 99)


def _latency(counts: funnel_sql.FunnelCounts, arms: list[str]) -> list[LatencyRow]:
    rows = []
    for arm in arms:
        by_source = counts.latencies.get(arm, {})
        order = [s for s in SOURCES if s in by_source] + sorted(set(by_source) - set(SOURCES))
        for source in order:
            values = by_source[source]
            p5, p25, p50, p75, p90, p95, p99 = stats.percentiles(values, PERCENTILES)
            mean = sum(values) / len(values)
            rows.append(
                LatencyRow(arm, source, len(values), p5, p25, p50, p75, p90, p95, p99, mean)
            )
    return rows
