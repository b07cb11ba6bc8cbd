"""Load-time checks of flow.yaml's ``tuning:`` section and ``llm.adapter``.

Kept out of the loader so that its diff stays a few lines: the loader calls :func:`check_tuning`
with the other cross-file checks, compiles the section with :func:`compile_tuning`, and hands
the compiled flow to :func:`attach_adapter`, which verifies the adapter's manifest (an error for a
missing or tampered adapter, a warning when it was trained on another script library).
"""

from __future__ import annotations

import dataclasses
import warnings
from types import MappingProxyType
from typing import Any

from engine.errors import FlowProblem, FlowValidationError
from engine.flow import schema
from engine.flow.model import Flow, TuningSpec


class StaleAdapterWarning(UserWarning):
    """The flow's adapter was trained on another version of the script library."""


def check_tuning(
    flow: schema.FlowFile,
    intents: schema.IntentsFile | None,
    scripts: schema.ScriptsFile | None,
    problems: Any,
) -> None:
    """Every intent, act, stage and slot the section names must exist in the flow."""
    if flow.tuning is None:
        return
    f, loc = "flow.yaml", ("tuning",)
    acts = {s.act for s in scripts.scripts} if scripts else None
    for intent, answer_acts in flow.tuning.answers.items():
        if intents is not None and intent not in intents.intents:
            problems.add(f, (*loc, "answers", intent), f"intent {intent!r} is not in intents.yaml")
        _check_acts(answer_acts, acts, (*loc, "answers", intent), problems)
    for stage, stage_acts in flow.tuning.default_acts.items():
        if stage not in flow.stages or flow.stages[stage].kind != "llm":
            problems.add(f, (*loc, "default_acts", stage), f"{stage!r} is not an llm stage")
        _check_acts(stage_acts, acts, (*loc, "default_acts", stage), problems)
    for slot in flow.tuning.slots:
        if slot not in flow.slots:
            problems.add(f, (*loc, "slots", slot), f"slot {slot!r} is not in flow.yaml's slots")


def _check_acts(names: list[str], acts: set[str] | None, loc: tuple, problems: Any) -> None:
    for i, act in enumerate(names):
        if acts is not None and act not in acts:
            problems.add("flow.yaml", (*loc, i), f"no script in scripts.yaml has act {act!r}")


def compile_tuning(section: schema.TuningConfig | None) -> TuningSpec:
    if section is None:
        return TuningSpec()

    def frozen(mapping: dict[str, list[str]]) -> MappingProxyType[str, tuple[str, ...]]:
        return MappingProxyType({k: tuple(v) for k, v in mapping.items()})

    return TuningSpec(
        answers=frozen(section.answers),
        default_acts=frozen(section.default_acts),
        slots=frozen(section.slots),
    )


def attach_adapter(compiled: Flow, flow: schema.FlowFile, problems: Any) -> Flow:
    """The flow with its verified adapter (path and hash) and any warnings; a missing or
    tampered adapter raises :class:`FlowValidationError` at ``llm.adapter``'s line."""
    if not flow.llm.adapter:
        return compiled
    from engine.tuning.manifest import AdapterError, verify_adapter

    loc = ("llm", "adapter")
    folder = (compiled.folder / flow.llm.adapter).resolve()
    try:
        manifest = verify_adapter(folder)
    except AdapterError as exc:
        problems.add("flow.yaml", loc, str(exc))
        raise FlowValidationError(problems.items) from None
    found: list[FlowProblem] = []
    trained_on = manifest.get("library_hash")
    if trained_on != compiled.library_hash:
        before = len(problems.items)
        problems.add(
            "flow.yaml",
            loc,
            f"WARNING: adapter {flow.llm.adapter} was trained on script library {trained_on}, "
            f"but scripts.yaml is now {compiled.library_hash}: retrain it with `salesbot tune` "
            "(its drafts may favour scripts that changed or were removed)",
        )
        found = problems.items[before:]
        del problems.items[before:]
        for problem in found:
            warnings.warn(str(problem), StaleAdapterWarning, stacklevel=3)
    return dataclasses.replace(
        compiled,
        adapter=folder,
        adapter_hash=manifest["adapter_hash"],
        warnings=compiled.warnings + tuple(found),
    )
