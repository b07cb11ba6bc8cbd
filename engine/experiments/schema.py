"""experiments.yaml: the experiments run on a flow, validated like the flow itself.

Every problem is collected and reported with file, line and field (the same
:class:`~engine.errors.FlowProblem` the flow loader uses), first against the pydantic models,
then against the flow (stages, outcomes and scripts the experiments name must exist).

Example::

    experiments:
      hybrid_vs_pure_llm:
        seed: bb-2025-06
        unit: customer_id             # or: session
        control: hybrid
        primary_metric: close_rate    # or: hangup_rate, reach:<stage>
        success_outcomes: [converted]
        funnel: [greeting, identity, needs, pitch, close, converted]
        arms:
          hybrid: {mode: hybrid, weight: 0.5}
          pure_llm: {mode: pure_llm, weight: 0.5,
                     overrides: {compliance: {threshold: 0.6}, generation: {temperature: 0.5}}}
        fallback_wording:             # fallback variants compared in every arm
          pitch: {pitch.fallback_a: 0.5, pitch.fallback_b: 0.5}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import FlowValidationError
from engine.experiments.experiment import ArmConfig, Experiment
from engine.experiments.overrides import OverrideError, Overrides, apply_overrides
from engine.flow.model import Flow
from engine.flow.problems import FileProblems, Problems
from engine.flow.schema import Name, ScriptId
from engine.flow.yaml_lines import Loc
from engine.hashing import content_hash

FILE_NAME = "experiments.yaml"
DEFINITION_SCHEME = "experiment:v1:"
ArmName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
ExperimentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)]
Metric = Annotated[str, Field(pattern=r"^(close_rate|hangup_rate|reach:[a-z][a-z0-9_]*)$")]
Weight = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSpec(_Strict):
    mode: Literal["hybrid", "pure_llm"] = Field(
        description="hybrid: stages run as the flow says; pure_llm: every stage by the LLM."
    )
    weight: Weight = Field(description="Share of units assigned to this arm; arms sum to 1.")
    description: str = ""
    overrides: Overrides | None = None


class ExperimentSpec(_Strict):
    description: str = ""
    seed: Annotated[str, Field(min_length=1, max_length=200)] | int = Field(
        description="Hash seed: changing it reshuffles every unit."
    )
    unit: Literal["customer_id", "session"] = "customer_id"
    control: ArmName | None = Field(None, description="Baseline arm; default: the first arm.")
    primary_metric: Metric = "close_rate"
    success_outcomes: list[Name] = Field(default_factory=lambda: ["converted"], min_length=1)
    hangup_outcomes: list[Name] | None = None
    funnel: list[Name] | None = Field(None, min_length=2)
    arms: dict[ArmName, ArmSpec] = Field(min_length=2)
    fallback_wording: dict[Name, dict[ScriptId, Weight]] = Field(default_factory=dict)


class ExperimentsFile(_Strict):
    """experiments.yaml"""

    experiments: dict[ExperimentName, ExperimentSpec] = Field(min_length=1)


def load_experiments(
    source: str | Path, flow: Flow | None = None, *, required: bool = False
) -> dict[str, Experiment]:
    """Experiments from a flow folder's experiments.yaml (or a file path), checked against
    ``flow`` when given. A folder without the file has no experiments (unless ``required``)."""
    path = Path(source)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file() and not required and path.name == FILE_NAME:
        return {}
    found = Problems(path.parent)
    parsed = found.read(path.name, ExperimentsFile)
    if parsed is None:
        raise FlowValidationError(found.items)
    problems = found.file(path.name)
    experiments: dict[str, Experiment] = {}
    for name, spec in parsed.experiments.items():
        loc: Loc = ("experiments", name)
        _check_experiment(spec, loc, problems)
        if flow is not None:
            _check_against_flow(spec, loc, flow, problems)
        raw = found.located[path.name].data["experiments"][name]
        experiments[name] = _compile(name, spec, flow, raw)
    found.raise_if_any()
    return experiments


def _check_experiment(spec: ExperimentSpec, loc: Loc, problems: FileProblems) -> None:
    total = sum(arm.weight for arm in spec.arms.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        problems.add((*loc, "arms"), f"arm weights sum to {total:g}, not 1")
    if spec.control is not None and spec.control not in spec.arms:
        problems.add((*loc, "control"), f"control {spec.control!r} is not one of the arms")
    if spec.funnel and len(set(spec.funnel)) != len(spec.funnel):
        problems.add((*loc, "funnel"), "a stage appears twice in the funnel")
    for stage, pool in spec.fallback_wording.items():
        total = sum(pool.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            problems.add((*loc, "fallback_wording", stage), f"weights sum to {total:g}, not 1")
    for arm_name, arm in spec.arms.items():
        if arm.overrides is None:
            continue
        for stage, override in arm.overrides.stages.items():
            if override.compliance and override.compliance.fallback:
                total = sum(override.compliance.fallback.values())
                if not math.isclose(total, 1.0, abs_tol=1e-6):
                    where = (*loc, "arms", arm_name, "overrides", "stages", stage)
                    problems.add((*where, "compliance", "fallback"), f"weights sum to {total:g}")


def _check_against_flow(spec: ExperimentSpec, loc: Loc, flow: Flow, problems: FileProblems) -> None:
    stages = flow.stages
    outcomes = sorted({s.outcome for s in stages.values() if s.outcome})
    live = sorted(name for name, s in stages.items() if not s.is_end)

    def need_stage(name: str, where: Loc, *, live_only: bool = False) -> bool:
        if name not in stages:
            problems.add(where, f"unknown stage {name!r} (stages: {', '.join(stages)})")
            return False
        if live_only and stages[name].is_end:
            problems.add(where, f"{name!r} is an end stage (allowed: {', '.join(live)})")
            return False
        return True

    def need_outcome(name: str, where: Loc) -> None:
        if name not in outcomes:
            problems.add(where, f"unknown outcome {name!r} (outcomes: {', '.join(outcomes)})")

    for i, name in enumerate(spec.funnel or []):
        need_stage(name, (*loc, "funnel", i))
    if spec.primary_metric.startswith("reach:"):
        need_stage(spec.primary_metric.split(":", 1)[1], (*loc, "primary_metric"))
    for i, name in enumerate(spec.success_outcomes):
        need_outcome(name, (*loc, "success_outcomes", i))
    for i, name in enumerate(spec.hangup_outcomes or []):
        need_outcome(name, (*loc, "hangup_outcomes", i))
    for stage, pool in spec.fallback_wording.items():
        where = (*loc, "fallback_wording", stage)
        if need_stage(stage, where, live_only=True):
            _check_pool(flow, stage, pool, where, problems)
    for arm_name, arm in spec.arms.items():
        if arm.overrides is None:
            continue
        where = (*loc, "arms", arm_name, "overrides")
        valid = True
        for stage, override in arm.overrides.stages.items():
            if not need_stage(stage, (*where, "stages", stage), live_only=True):
                valid = False
            elif override.compliance and override.compliance.fallback:
                pool_loc = (*where, "stages", stage, "compliance", "fallback")
                _check_pool(flow, stage, override.compliance.fallback, pool_loc, problems)
        if valid:
            try:
                apply_overrides(flow, arm.overrides)
            except OverrideError as exc:
                problems.add(where, str(exc))


def _check_pool(
    flow: Flow, stage: str, pool: dict[str, float], where: Loc, problems: FileProblems
) -> None:
    for script_id in pool:
        script = flow.scripts.get(script_id)
        if script is None:
            problems.add((*where, script_id), f"script id {script_id!r} is not in scripts.yaml")
        elif stage not in script.stages and "*" not in script.stages:
            problems.add((*where, script_id), f"script {script_id!r} is not listed for {stage!r}")


def _compile(name: str, spec: ExperimentSpec, flow: Flow | None, raw: Any) -> Experiment:
    arms = []
    for arm_name, arm in spec.arms.items():
        overrides = arm.overrides.model_dump(exclude_none=True) if arm.overrides else {}
        for stage, pool in spec.fallback_wording.items():
            stage_block = overrides.setdefault("stages", {}).setdefault(stage, {})
            compliance = stage_block.setdefault("compliance", {})
            compliance.setdefault("fallback", dict(pool))  # the arm's own pool wins
        if not overrides.get("stages"):
            overrides.pop("stages", None)
        arms.append(ArmConfig(arm_name, arm.mode, arm.weight, overrides, arm.description))
    if spec.hangup_outcomes is not None:
        hangup = tuple(spec.hangup_outcomes)
    elif flow is not None:
        on_hangup = flow.stages.get(flow.on_hangup) if flow.on_hangup else None
        hangup = (on_hangup.outcome,) if on_hangup is not None and on_hangup.outcome else ()
    else:
        hangup = ("hung_up",)
    funnel = tuple(spec.funnel) if spec.funnel else _default_funnel(flow, spec.success_outcomes)
    return Experiment(
        name=name,
        description=spec.description.strip(),
        seed=str(spec.seed),
        unit=spec.unit,
        control=spec.control or next(iter(spec.arms)),
        primary_metric=spec.primary_metric,
        success_outcomes=tuple(spec.success_outcomes),
        hangup_outcomes=hangup,
        funnel=funnel,
        arms=tuple(arms),
        definition=content_hash(raw, DEFINITION_SCHEME),
    )


def _default_funnel(flow: Flow | None, success: list[str]) -> tuple[str, ...] | None:
    """Without an explicit funnel: the live stages in declaration order, then the success
    end stages. Without a flow the report orders stages from the data instead."""
    if flow is None:
        return None
    live = [name for name, s in flow.stages.items() if not s.is_end]
    wins = [name for name, s in flow.stages.items() if s.is_end and s.outcome in success]
    return tuple(live + wins)
