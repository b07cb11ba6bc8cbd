"""A compiled experiment: the immutable object the engine assigns with and the report reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.experiments.assignment import Assignment, arm_for_bucket, bucket_of

UNITS = ("customer_id", "session")


@dataclass(frozen=True)
class ArmConfig:
    name: str
    mode: str  # hybrid | pure_llm
    weight: float
    overrides: Mapping[str, Any]  # effective overrides (fallback wording merged in), plain JSON
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    seed: str
    unit: str  # customer_id | session
    control: str
    primary_metric: str  # close_rate | hangup_rate | reach:<stage>
    success_outcomes: tuple[str, ...]
    hangup_outcomes: tuple[str, ...]
    funnel: tuple[str, ...] | None  # None: the report orders stages from the data
    arms: tuple[ArmConfig, ...]
    definition: str  # "experiment:v1:<sha256>" of the experiment's YAML block

    @property
    def weights(self) -> list[tuple[str, float]]:
        return [(a.name, a.weight) for a in self.arms]

    def arm(self, name: str) -> ArmConfig:
        for arm in self.arms:
            if arm.name == name:
                return arm
        known = ", ".join(a.name for a in self.arms)
        raise KeyError(f"experiment {self.name!r} has no arm {name!r} (arms: {known})")

    def design(self) -> dict[str, Any]:
        """What a report needs to analyse this experiment, stored with every assignment so the
        database alone is enough to report (and a change of design mid-run is visible)."""
        return {
            "definition": self.definition,
            "description": self.description,
            "control": self.control,
            "primary_metric": self.primary_metric,
            "success_outcomes": list(self.success_outcomes),
            "hangup_outcomes": list(self.hangup_outcomes),
            "funnel": list(self.funnel) if self.funnel is not None else None,
            "weights": {a.name: a.weight for a in self.arms},
            "modes": {a.name: a.mode for a in self.arms},
            "unit": self.unit,
        }

    def assign(self, unit_id: str, *, arm: str | None = None) -> Assignment:
        """The unit's assignment. ``arm`` forces an arm (paired simulation runs every persona in
        every arm); the bucket is still recorded so the record stays auditable."""
        bucket = bucket_of(self.seed, str(unit_id))
        chosen = self.arm(arm if arm is not None else arm_for_bucket(bucket, self.weights))
        return Assignment(
            experiment=self.name,
            arm=chosen.name,
            mode=chosen.mode,
            seed=self.seed,
            unit=self.unit,
            bucket=bucket,
            forced=arm is not None,
            overrides=chosen.overrides,
            design=self.design(),
        )
