"""Which experiment and arms a simulation runs.

A simulation either runs arms of an experiment declared in the flow's ``experiments.yaml``
(its control, primary metric, funnel and per-arm overrides apply), or an ad-hoc experiment built
from ``--arms``: each arm a mode (``hybrid``, ``pure_llm``), optionally labelled
(``a=hybrid,b=hybrid`` runs one mode twice, an A/A test). Either way every conversation stores
the experiment's assignment record with the arm forced (the same customer runs in every arm), so
the report reads the design from the database like for live traffic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.errors import SalesbotError
from engine.experiments import MODES, ArmConfig, Experiment
from engine.flow.model import Flow
from engine.hashing import content_hash

LABEL = re.compile(r"^[a-z][a-z0-9_]*$")  # the arm-name rule of experiments.yaml
ADHOC_SCHEME = "experiment:v1:"
MAX_LABEL = 40


class SimulationError(SalesbotError):
    """A simulation cannot run or resume as asked."""


@dataclass(frozen=True)
class Arm:
    """One arm: the name it is stored and reported under, and the engine mode it runs."""

    label: str
    mode: str  # hybrid | pure_llm


def parse_arms(spec: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"hybrid,pure_llm"`` -> [("hybrid", None), ...]; ``"a=hybrid"`` -> [("a", "hybrid")]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parsed: list[tuple[str, str | None]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        label, sep, mode = item.partition("=")
        label = label.strip()
        if not LABEL.match(label) or len(label) > MAX_LABEL:
            raise SimulationError(
                f"arm {item!r}: a name is lower-case letters, digits and '_', starting with a "
                f"letter, at most {MAX_LABEL} characters"
            )
        parsed.append((label, mode.strip() if sep else None))
    if not parsed:
        raise SimulationError("give at least one arm, e.g. --arms hybrid,pure_llm")
    labels = [label for label, _ in parsed]
    if len(set(labels)) != len(labels):
        raise SimulationError(f"arm names must be distinct, got {', '.join(labels)}")
    return parsed


def choose(
    flow: Flow,
    experiments: Mapping[str, Experiment],
    arms: str | Sequence[str] | None,
    experiment: str | None,
    seed: int,
) -> tuple[Experiment, list[Arm]]:
    """The experiment and the arms, in order (the first is the control of an ad-hoc run).

    Without ``experiment``, a declared experiment whose arms are exactly the ones asked for
    (same names, and the same modes where given) is used, so that its design (control, funnel,
    fallback wording, overrides) applies; otherwise an ad-hoc experiment is built.
    """
    parsed = parse_arms(arms or "hybrid,pure_llm")
    if experiment is None:
        asked = {label: mode for label, mode in parsed}
        matching = [
            name
            for name, spec in experiments.items()
            if {a.name for a in spec.arms} == set(asked)
            and all(asked[a.name] in (None, a.mode) for a in spec.arms)
        ]
        if len(matching) == 1:
            experiment = matching[0]
    if experiment is not None:
        if experiment not in experiments:
            known = ", ".join(sorted(experiments)) or "none: the flow has no experiments.yaml"
            raise SimulationError(f"unknown experiment {experiment!r} (known: {known})")
        spec = experiments[experiment]
        asked = parsed if arms else [(a.name, None) for a in spec.arms]
        chosen = []
        for name, mode in asked:
            try:
                declared = spec.arm(name).mode
            except KeyError as exc:
                raise SimulationError(exc.args[0]) from None
            if mode not in (None, declared):
                raise SimulationError(f"arm {name!r} of {spec.name!r} runs {declared}, not {mode}")
            chosen.append(Arm(name, declared))
        if spec.control not in {a.label for a in chosen}:
            raise SimulationError(
                f"the arms must include the experiment's control arm {spec.control!r}"
            )
        return spec, chosen
    chosen = []
    for label, mode in parsed:
        mode = mode or label
        if mode not in MODES:
            raise SimulationError(
                f"arm {label!r}: unknown mode {mode!r} (modes: {', '.join(MODES)}; "
                "name=mode labels an arm, --experiment runs arms of experiments.yaml)"
            )
        chosen.append(Arm(label, mode))
    return adhoc_experiment(flow, chosen, seed), chosen


def adhoc_experiment(flow: Flow, arms: Sequence[Arm], seed: int) -> Experiment:
    """An experiment for arms given on the command line: the first arm is the control, the
    primary metric is the close rate (reaching a ``converted`` outcome)."""
    outcomes = {s.outcome for s in flow.stages.values() if s.outcome}
    if "converted" not in outcomes:
        raise SimulationError(
            f"flow {flow.name!r} has no 'converted' outcome to measure a close rate with; "
            "declare the experiment in experiments.yaml and pass --experiment"
        )
    success = ("converted",)
    hangup_stage = flow.stages.get(flow.on_hangup) if flow.on_hangup else None
    hangup = (hangup_stage.outcome,) if hangup_stage and hangup_stage.outcome else ()
    funnel = tuple(name for name, s in flow.stages.items() if not s.is_end) + tuple(
        name for name, s in flow.stages.items() if s.is_end and s.outcome in success
    )
    weight = 1 / len(arms)
    definition = {
        "adhoc": [[a.label, a.mode] for a in arms],
        "success_outcomes": list(success),
        "funnel": list(funnel),
    }
    return Experiment(
        name="sim_" + "_vs_".join(a.label for a in arms)[:90],
        description="Simulation arms given on the command line (salesbot simulate --arms).",
        seed=f"simulation-{seed}",
        unit="customer_id",
        control=arms[0].label,
        primary_metric="close_rate",
        success_outcomes=success,
        hangup_outcomes=hangup,
        funnel=funnel,
        arms=tuple(ArmConfig(a.label, a.mode, weight, {}) for a in arms),
        definition=content_hash(definition, ADHOC_SCHEME),
    )
