"""Experiments: experiments.yaml, deterministic assignment, per-arm flows.

The engine calls :func:`resolve_arm` once per session (at start) and :func:`apply_overrides`
to serve an arm's turns; the report reads the design stored with each assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import SalesbotError
from engine.experiments.assignment import (
    BUCKETS,
    HASH_VERSION,
    SCHEME,
    Assignment,
    arm_for_bucket,
    bucket_of,
    fnv1a32,
    gb_hash,
)
from engine.experiments.experiment import ArmConfig, Experiment
from engine.experiments.overrides import OverrideError, Overrides, apply_overrides
from engine.experiments.schema import load_experiments

MODES = ("hybrid", "pure_llm")

__all__ = [
    "BUCKETS",
    "HASH_VERSION",
    "MODES",
    "SCHEME",
    "ArmConfig",
    "Assignment",
    "Experiment",
    "OverrideError",
    "Overrides",
    "apply_overrides",
    "arm_for_bucket",
    "bucket_of",
    "fnv1a32",
    "gb_hash",
    "load_experiments",
    "resolve_arm",
]


def resolve_arm(
    experiments: Mapping[str, Experiment],
    *,
    customer_id: str,
    session_id: str,
    arm: str | None,
    experiment: str | None,
    assignment: Assignment | Mapping[str, Any] | None,
) -> tuple[str, str, dict[str, Any]]:
    """The (arm name, mode, assignment record) a new session runs with.

    - ``assignment`` given (e.g. computed by the simulator): used as is;
    - ``experiment`` known to the engine: assigned by hash (``arm`` forces an arm);
    - otherwise ``arm`` is a mode name (``hybrid`` or ``pure_llm``) and nothing is assigned.
    """
    if isinstance(assignment, Assignment):
        record: dict[str, Any] = assignment.record()
    elif assignment is not None:
        record = dict(assignment)
    elif experiment is not None and experiment in experiments:
        spec = experiments[experiment]
        unit_id = session_id if spec.unit == "session" else customer_id
        try:
            record = spec.assign(str(unit_id), arm=arm).record()
        except KeyError as exc:
            raise SalesbotError(exc.args[0]) from None
    elif experiment is not None and arm is None:
        known = ", ".join(sorted(experiments)) or "none loaded"
        raise SalesbotError(f"unknown experiment {experiment!r} (known: {known})")
    else:
        record = {}
    name = str(record.get("arm") or arm or "hybrid")
    if arm is not None and arm != name:
        raise SalesbotError(f"arm {arm!r} contradicts the assignment's arm {name!r}")
    mode = str(record.get("mode") or name)
    if mode not in MODES:
        raise SalesbotError(f"unknown arm mode {mode!r} (known: {', '.join(MODES)})")
    if experiment is not None and record.get("experiment") not in (None, experiment):
        raise SalesbotError(
            f"assignment is for experiment {record.get('experiment')!r}, not {experiment!r}"
        )
    return name, mode, record
