"""Arm overrides: the same flow with a few stage parameters changed for one arm.

An arm is the flow plus overrides (compliance threshold or mode, fallback wording pools,
generation parameters), so the derived flow shares every script, intent and transition with the
base flow and the funnel is measured with the same ruler. The overrides are stored in the
assignment record; a session started by one replica is served identically by another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import SalesbotError
from engine.flow.generation import GenerationOverrides
from engine.flow.model import Flow, Stage
from engine.flow.schema import Name, StageCompliance


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComplianceOverride(_Strict):
    threshold: float | None = Field(None, ge=0, le=1, description="Similarity threshold.")
    mode: Literal["strict", "pass"] | None = None


class StageOverride(_Strict):
    compliance: StageCompliance | None = None
    generation: GenerationOverrides | None = None


class Overrides(_Strict):
    """What an arm changes; flow-wide blocks apply to every stage, stage blocks on top."""

    compliance: ComplianceOverride | None = None
    generation: GenerationOverrides | None = None
    stages: dict[Name, StageOverride] = Field(default_factory=dict)


class OverrideError(SalesbotError):
    """Overrides that do not fit the flow (unknown stage, parameters out of range)."""


def apply_overrides(flow: Flow, overrides: Mapping[str, Any] | Overrides | None) -> Flow:
    """The flow with an arm's overrides applied; the flow itself when there are none."""
    if not overrides:
        return flow
    spec = overrides if isinstance(overrides, Overrides) else Overrides.model_validate(overrides)
    for name in spec.stages:
        if name not in flow.stages or flow.stages[name].is_end:
            raise OverrideError(f"overrides name stage {name!r}, which is not a non-end stage")
    stages = {name: _stage(stage, spec) for name, stage in flow.stages.items()}
    return dataclasses.replace(flow, stages=type(flow.stages)(stages), **_pure_llm(flow, spec))


def _pure_llm(flow: Flow, spec: Overrides) -> dict[str, Any]:
    """The pure_llm arm has no stages: flow-wide overrides apply to its whole-library policy
    and to the generation parameters of its playbook prompt."""
    changes: dict[str, Any] = {}
    if flow.pure_llm is not None and spec.compliance is not None:
        block = spec.compliance
        changes["pure_llm"] = dataclasses.replace(
            flow.pure_llm,
            threshold=block.threshold if block.threshold is not None else flow.pure_llm.threshold,
            mode=block.mode or flow.pure_llm.mode,
        )
    if spec.generation is not None:
        try:
            changes["default_generation"] = flow.default_generation.merged(spec.generation)
        except ValueError as exc:
            raise OverrideError(f"generation overrides: {exc}") from None
    return changes


def _stage(stage: Stage, spec: Overrides) -> Stage:
    if stage.is_end or stage.compliance is None or stage.generation is None:
        return stage
    own = spec.stages.get(stage.name, StageOverride())
    policy = stage.compliance
    threshold, mode, pool = policy.threshold, policy.mode, policy.fallback
    for block in (spec.compliance, own.compliance):
        if block is not None:
            threshold = block.threshold if block.threshold is not None else threshold
            mode = block.mode or mode
    if own.compliance is not None and own.compliance.fallback:
        pool = tuple(sorted(own.compliance.fallback.items()))
    pool_ids = {script_id for script_id, _ in pool}
    policy = dataclasses.replace(
        policy,
        threshold=threshold,
        mode=mode,
        fallback=pool,
        candidates=tuple(c for c in policy.candidates if c not in pool_ids),
    )
    try:
        generation = stage.generation.merged(spec.generation).merged(own.generation)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise OverrideError(f"stage {stage.name!r}: generation overrides: {exc}") from None
    return dataclasses.replace(stage, compliance=policy, generation=generation)
