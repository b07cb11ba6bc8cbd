"""A run's outcomes read back from the database: per conversation, paired by customer.

The A/A benchmark, the tests and the terminal summary need the paired outcomes of a run quickly
and without building the full report; this reads the run's conversations and the stages they
reached (:func:`storage.runs.run_conversations`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from engine.experiments import Experiment
from engine.report.stats import Paired, mcnemar_paired
from storage import Store, runs


@dataclass(frozen=True)
class SimConversation:
    session_id: str
    customer_id: str
    arm: str  # the arm's label
    mode: str
    persona: str | None
    outcome: str | None
    turns: int
    stages: frozenset[str]


def run_conversations(store: Store, run_id: str) -> list[SimConversation]:
    """Every conversation of the run, ordered by customer then arm label."""
    out = [
        SimConversation(
            session_id=c.id,
            customer_id=c.customer_id,
            arm=str((c.assignment or {}).get("arm", c.arm)),
            mode=c.arm,
            persona=((c.assignment or {}).get("simulation") or {}).get("persona"),
            outcome=c.outcome,
            turns=c.turn_count,
            stages=c.stages,
        )
        for c in runs.run_conversations(store, run_id)
    ]
    return sorted(out, key=lambda c: (c.customer_id, c.arm))


def outcome_counts(conversations: list[SimConversation]) -> dict[str, Counter[str]]:
    """Arm label -> outcome -> conversations (unfinished ones count as "active")."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for c in conversations:
        counts[c.arm][c.outcome or "active"] += 1
    return dict(counts)


def rate(conversations: list[SimConversation], arm: str, success: str = "converted") -> float:
    """Share of the arm's conversations that reached ``success`` (a stage or an outcome)."""
    mine = [c for c in conversations if c.arm == arm]
    if not mine:
        return 0.0
    return sum(success in c.stages or c.outcome == success for c in mine) / len(mine)


def succeeded(conversation: SimConversation, metric: str, experiment: Experiment) -> bool:
    """Whether a conversation counts for a report metric (close_rate, hangup_rate, reach:X)."""
    if metric == "close_rate":
        return conversation.outcome in experiment.success_outcomes
    if metric == "hangup_rate":
        return conversation.outcome in experiment.hangup_outcomes
    if metric.startswith("reach:"):
        return metric.split(":", 1)[1] in conversation.stages
    raise ValueError(f"unknown metric {metric!r}")


@dataclass(frozen=True)
class PairedComparison:
    """McNemar's test of one arm against the control over the customers run in both."""

    metric: str
    arm: str
    control: str
    test: Paired  # rate_a is the control's, rate_b the arm's


def paired_comparisons(
    conversations: list[SimConversation], experiment: Experiment, arms: list[str]
) -> list[PairedComparison]:
    """The primary metric of every arm against the control, paired by customer."""
    metric, control = experiment.primary_metric, experiment.control
    by_customer: dict[str, dict[str, bool]] = defaultdict(dict)
    for c in conversations:
        by_customer[c.customer_id][c.arm] = succeeded(c, metric, experiment)
    out = []
    for arm in arms:
        if arm == control:
            continue
        pairs = [(v[control], v[arm]) for v in by_customer.values() if control in v and arm in v]
        test = mcnemar_paired([a for a, _ in pairs], [b for _, b in pairs])
        out.append(PairedComparison(metric, arm, control, test))
    return out
