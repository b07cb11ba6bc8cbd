"""Health checks: can the numbers in this report be trusted? Each check ends in a verdict a
product manager can read: ok, warn (read with care) or alarm (do not use the results)."""

from __future__ import annotations

from typing import Any

from engine.experiments.assignment import HASH_VERSION, arm_for_bucket, bucket_of
from engine.report import stats
from engine.report.format import pct, pts, pval
from engine.report.model import HealthCheck, Report
from storage.funnel import AssignmentRow, DesignSeen, FunnelCounts

MIN_UNITS = 100  # per arm, below which intervals are too wide to act on
MAX_IN_PROGRESS = 0.05
MAX_ERRORS = 0.01
MAX_UNIVERSAL = 0.10


def checks(
    report: Report,
    counts: FunnelCounts,
    seen: list[DesignSeen],
    rows: list[AssignmentRow],
) -> list[HealthCheck]:
    return [
        _sample_ratio(report),
        _assignment(rows, seen),
        _design(seen),
        _power(report),
        _in_progress(report),
        _llm_errors(report, counts),
        _fallbacks(report),
    ]


def _sample_ratio(report: Report) -> HealthCheck:
    name = "Sample ratio"
    arms = [a for a in report.arms]
    if any(a.weight is None for a in arms):
        return HealthCheck(
            name, "warn", "The design's arm weights are unknown, so the split cannot be checked."
        )
    observed = [a.assigned for a in arms]
    srm = stats.sample_ratio_mismatch(observed, [a.weight or 0.0 for a in arms])
    split = " / ".join(f"{a.name} {a.assigned:,}" for a in arms)
    declared = " / ".join(f"{(a.weight or 0) * 100:g}%" for a in arms)
    detail = {"observed": observed, "expected": list(srm.expected), "chi2": srm.chi2}
    detail["p_value"] = srm.p_value
    if srm.mismatch:
        verdict = (
            f"Sample ratio mismatch: {split} against a declared {declared} split "
            f"(chi-square p = {pval(srm.p_value)}). Assignment or logging is losing units "
            "unevenly; do not trust any result until the cause is found."
        )
        return HealthCheck(name, "alarm", verdict, detail)
    verdict = (
        f"The split ({split}) matches the declared {declared} "
        f"(chi-square p = {pval(srm.p_value)}; alarm below {stats.SRM_ALPHA:g})."
    )
    return HealthCheck(name, "ok", verdict, detail)


def _assignment(rows: list[AssignmentRow], seen: list[DesignSeen]) -> HealthCheck:
    """Re-derive every hashed assignment from its seed, and look for units in two arms."""
    name = "Assignment"
    recorded = [r for r in rows if r.bucket is not None]
    if not recorded:
        return HealthCheck(
            name,
            "warn",
            "Conversations carry no assignment record: arms were chosen by the caller, so "
            "randomisation cannot be verified.",
        )
    weights = {
        d.definition: list(((d.record.get("design") or {}).get("weights") or {}).items())
        for d in seen
    }
    mismatched, arms_of_unit = 0, {}
    for row in recorded:
        if row.forced:
            continue
        unit_id = row.session_id if row.unit == "session" else row.customer_id
        bucket = bucket_of(row.seed or "", unit_id)
        split = weights.get(row.definition)
        if (
            row.hash_version != HASH_VERSION
            or bucket != row.bucket
            or (split and arm_for_bucket(bucket, split) != row.arm)
        ):
            mismatched += 1
        arms_of_unit.setdefault(unit_id, set()).add(row.arm)
    split_units = sum(1 for arms in arms_of_unit.values() if len(arms) > 1)
    forced = sum(1 for r in recorded if r.forced)
    detail = {
        "records": len(recorded),
        "forced": forced,
        "mismatched": mismatched,
        "units_in_two_arms": split_units,
        "without_record": len(rows) - len(recorded),
    }
    if mismatched or split_units:
        verdict = (
            f"{mismatched:,} stored assignments do not re-derive from their seed and "
            f"{split_units:,} units appear in more than one arm: the randomisation is broken."
        )
        return HealthCheck(name, "alarm", verdict, detail)
    verdict = f"All {len(recorded) - forced:,} hashed assignments re-derive from their seed"
    verdict += " and every unit stayed in one arm."
    if forced:
        verdict += f" {forced:,} conversations had their arm set by the caller (paired runs)."
    return HealthCheck(name, "ok", verdict, detail)


def _design(seen: list[DesignSeen]) -> HealthCheck:
    name = "Experiment definition"
    detail = {d.definition or "(none)": d.conversations for d in seen}
    if len(seen) > 1:
        verdict = (
            f"The experiment's definition changed during the run ({len(seen)} versions); this "
            "report uses the latest. Compare arms only within one version if the change mattered."
        )
        return HealthCheck(name, "warn", verdict, detail)
    return HealthCheck(name, "ok", "One definition of the experiment was used throughout.", detail)


def _power(report: Report) -> HealthCheck:
    name = "Sample size"
    small = [a for a in report.arms if a.assigned < MIN_UNITS]
    mdes = [c.mde for c in report.primary if c.mde is not None]
    detail: dict[str, Any] = {"min_units": MIN_UNITS, "mde": mdes}
    reach = ""
    if mdes:
        reach = (
            f" At this size the {report.primary_label.lower()} test detects an increase of "
            f"about {pts(max(mdes))} with 80% power at alpha {report.alpha:g}."
        )
    if small:
        names = ", ".join(f"{a.name} ({a.assigned:,})" for a in small)
        verdict = f"Few units in {names}: intervals are wide, treat results as provisional."
        return HealthCheck(name, "warn", verdict + reach, detail)
    return HealthCheck(name, "ok", f"Every arm has at least {MIN_UNITS} units." + reach, detail)


def _in_progress(report: Report) -> HealthCheck:
    name = "Calls in progress"
    total = sum(a.assigned for a in report.arms)
    active = sum(a.active for a in report.arms)
    share = active / total if total else 0.0
    detail = {"active": active, "total": total}
    if share > MAX_IN_PROGRESS:
        verdict = (
            f"{pct(share)} of calls have not ended; later stages and outcomes are undercounted "
            "until they do."
        )
        return HealthCheck(name, "warn", verdict, detail)
    return HealthCheck(name, "ok", f"{active:,} of {total:,} calls still in progress.", detail)


def _llm_errors(report: Report, counts: FunnelCounts) -> HealthCheck:
    name = "LLM backend"
    turns = sum(r.turns for r in report.compliance)
    errors = sum(counts.llm_errors.values())
    detail = {"errors": errors, "llm_turns": turns}
    if turns and errors / turns > MAX_ERRORS:
        verdict = (
            f"The LLM backend failed on {errors:,} of {turns:,} LLM turns ({pct(errors / turns)}); "
            "those turns got a fallback, which drags the LLM-heavy arm down."
        )
        return HealthCheck(name, "warn", verdict, detail)
    return HealthCheck(name, "ok", f"{errors:,} backend errors in {turns:,} LLM turns.", detail)


def _fallbacks(report: Report) -> HealthCheck:
    name = "Compliance fallbacks"
    worst = None
    for arm in report.arms:
        rows = [r for r in report.compliance if r.arm == arm.name]
        turns = sum(r.turns for r in rows)
        universal = sum(r.universal.count for r in rows)
        if turns and (worst is None or universal / turns > worst[1]):
            worst = (arm.name, universal / turns, turns)
    if worst is None:
        return HealthCheck(name, "ok", "No LLM turns were logged.")
    detail = {"arm": worst[0], "universal_rate": worst[1], "llm_turns": worst[2]}
    if worst[1] > MAX_UNIVERSAL:
        verdict = (
            f"{worst[0]} sent the universal fallback in {pct(worst[1])} of LLM turns: the "
            "script library or the threshold leaves many drafts unmatched."
        )
        return HealthCheck(name, "warn", verdict, detail)
    verdict = f"The universal fallback stays at or below {pct(worst[1])} of LLM turns in every arm."
    return HealthCheck(name, "ok", verdict, detail)
