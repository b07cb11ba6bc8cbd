"""The report as data: what report.json holds and the HTML and Markdown views render."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from engine.report.stats import TWO_SAMPLE_INTERVAL, TWO_SAMPLE_TEST, Paired, Proportion

SCHEMA = "salesbot-report:v1"


@dataclass
class ArmSummary:
    name: str
    mode: str
    weight: float | None  # declared share, None when the design is unknown
    assigned: int
    active: int
    closed: Proportion  # success outcomes / assigned
    hung_up: Proportion  # hang-ups / assigned
    outcomes: dict[str, int]


@dataclass
class StageCell:
    reached: Proportion  # reached / assigned (unconditional)
    pass_through: float | None  # reached this stage / reached the previous funnel stage


@dataclass
class StageRow:
    stage: str
    arms: dict[str, StageCell]


@dataclass
class Comparison:
    """One metric, one treatment arm against the control arm."""

    metric: str  # close_rate | hangup_rate | reach:<stage>
    label: str
    arm: str
    control: str
    control_value: Proportion  # paired runs: over the customers run in both arms
    value: Proportion
    diff: float | None
    low: float | None  # Newcombe interval of the difference (paired or two-sample, see Report)
    high: float | None
    p_value: float | None
    # Holm across the secondary family, and across the primary comparisons when there is more
    # than one treatment arm (one primary comparison is not adjusted: None)
    p_adjusted: float | None
    significant: bool
    primary: bool = False
    mde: float | None = None  # primary only: minimum detectable increase at this sample size
    paired: Paired | None = None  # paired runs: McNemar's table, test and interval


@dataclass
class ComplianceRow:
    arm: str
    stage: str
    turns: int  # LLM drafts checked at this stage
    calls: int
    approved: int
    passed: int
    fallback: Proportion
    universal: Proportion
    errors: int = 0


@dataclass
class VariantRow:
    arm: str
    stage: str
    variant: str
    continued: Proportion  # calls that carried on after hearing it / calls that heard it


@dataclass
class VariantTest:
    arm: str
    stage: str
    variants: list[str]
    p_value: float | None
    p_adjusted: float | None


@dataclass
class LatencyRow:
    arm: str
    source: str
    n: int
    p5: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    mean: float | None


@dataclass
class ProcessOrderRow:
    """Process-order findings of one arm (engine/milestones.py)."""

    arm: str
    calls_sent: Proportion  # calls where the customer heard a script before its precondition
    calls_attempted: Proportion  # calls where an LLM draft tried to skip a step (kept back)
    sent: int  # findings, not calls
    attempted: int
    top: list[str] = field(default_factory=list)  # "script before flag (n)", most frequent first


@dataclass
class HealthCheck:
    name: str
    status: str  # ok | warn | alarm
    verdict: str  # one plain-language sentence or two
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    experiment: str
    description: str
    generated_at: str
    run_id: str | None
    database: str  # dialect only: a URL may hold a password
    flows: dict[str, int]
    design: dict[str, Any]
    control: str
    alpha: float
    primary_metric: str
    primary_label: str
    arms: list[ArmSummary]
    funnel: list[StageRow]
    primary: list[Comparison]
    secondary: list[Comparison]
    compliance: list[ComplianceRow]
    variants: list[VariantRow]
    variant_tests: list[VariantTest]
    latency: list[LatencyRow]
    health: list[HealthCheck]
    summary: list[str]
    schema: str = SCHEMA
    # Paired runs (a simulation: every customer meets every arm) compare arms customer by
    # customer; live traffic compares two independent samples. Named in every view.
    paired: bool = False
    test: str = TWO_SAMPLE_TEST
    interval_method: str = TWO_SAMPLE_INTERVAL
    process_order: list[ProcessOrderRow] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # arm mode -> how it decides
    measurement: str = ""  # how the funnel and outcome are measured (both arms)

    @property
    def treatments(self) -> list[str]:
        return [a.name for a in self.arms if a.name != self.control]

    def comparison(self, metric: str, arm: str) -> Comparison | None:
        for c in [*self.primary, *self.secondary]:
            if c.metric == metric and c.arm == arm:
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN and infinities become null."""
        return _clean(dataclasses.asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
