"""Load a flow folder, validate it whole, and compile it into a :class:`engine.flow.Flow`.

Validation collects every problem before failing, each with file, line and field, because a
flow author fixing one error per run would give up. Two passes: each file against its pydantic
model, then the cross-file rules (references, reachability, weights, placeholders).
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import FlowProblem, FlowValidationError
from engine.flow import schema
from engine.flow.generation import GenerationParams
from engine.flow.model import (
    CompliancePolicy,
    Flow,
    Milestone,
    Otherwise,
    Script,
    Stage,
    Transition,
    placeholders,
    template_problem,
)
from engine.flow.problems import Problems
from engine.flow.slots import compile_slot
from engine.flow.tuning import attach_adapter, check_tuning, compile_tuning
from engine.flow.yaml_lines import Loc
from engine.hashing import content_hash

HASH_SCHEME = "flow:v1:"


def _parse_files(problems: Problems) -> dict[str, BaseModel]:
    parsed: dict[str, BaseModel] = {}
    for file_name, model in schema.FILES.items():
        result = problems.read(file_name, model)
        if result is not None:
            parsed[file_name] = result
    return parsed


def _check_references(
    flow: schema.FlowFile,
    intents: schema.IntentsFile | None,
    scripts: schema.ScriptsFile | None,
    problems: Problems,
) -> None:
    """Cross-file references. A file that failed its own schema check is None: references into
    it are not checked (they would only repeat its errors), everything else still is."""
    f, s = "flow.yaml", "scripts.yaml"
    stage_names = set(flow.stages)
    script_ids: dict[str, int] = {}
    for i, script in enumerate(scripts.scripts if scripts else []):
        if script.id in script_ids:
            problems.add(s, ("scripts", i, "id"), f"duplicate script id {script.id!r}")
        script_ids[script.id] = i
        for j, stage in enumerate(script.stages):
            if stage != "*" and stage not in stage_names:
                problems.add(s, ("scripts", i, "stages", j), f"unknown stage {stage!r}")
        texts = [(("scripts", i, "text"), script.text)]
        texts += [(("scripts", i, "wordings", j), w) for j, w in enumerate(script.wordings)]
        for text_loc, text in texts:
            problem = template_problem(text)
            if problem:
                problems.add(s, text_loc, problem)
                continue
            for slot in sorted(placeholders(text) - set(flow.slots)):
                problems.add(s, text_loc, f"placeholder {{{slot}}} is not a slot in flow.yaml")

    def need_stage(name: str | None, loc: Loc) -> None:
        if name is not None and name not in stage_names:
            problems.add(
                f, loc, f"unknown stage {name!r} (stages: {', '.join(sorted(stage_names))})"
            )

    def need_script(script_id: str | None, loc: Loc) -> None:
        if scripts is not None and script_id is not None and script_id not in script_ids:
            problems.add(f, loc, f"script id {script_id!r} is not in scripts.yaml")

    def need_intent(intent: str, loc: Loc) -> None:
        if intents is not None and intent != schema.OUT_OF_SCOPE and intent not in intents.intents:
            problems.add(f, loc, f"intent {intent!r} is not defined in intents.yaml")

    from engine.llm.registry import available_backends

    if flow.llm.backend not in available_backends():
        problems.add(
            f,
            ("llm", "backend"),
            f"unknown backend {flow.llm.backend!r} (known: {', '.join(available_backends())})",
        )
    need_stage(flow.start, ("start",))
    need_stage(flow.on_hangup, ("on_hangup",))
    if flow.on_hangup in flow.stages and flow.stages[flow.on_hangup].kind != "end":
        problems.add(f, ("on_hangup",), "on_hangup must name an end stage")
    need_script(flow.compliance.universal_fallback, ("compliance", "universal_fallback"))
    for intent, tr in flow.global_.items():
        need_intent(intent, ("global", intent))
        need_stage(tr.to, ("global", intent, "to"))
        need_script(tr.say, ("global", intent, "say"))
        if tr.to is None and tr.say is None:
            problems.add(f, ("global", intent), "a transition needs `to`, `say` or both")

    for name, stage in flow.stages.items():
        loc: Loc = ("stages", name)
        need_script(stage.say, (*loc, "say"))
        for intent, tr in stage.on.items():
            need_intent(intent, (*loc, "on", intent))
            need_stage(tr.to, (*loc, "on", intent, "to"))
            need_script(tr.say, (*loc, "on", intent, "say"))
            if tr.to is None and tr.say is None:
                problems.add(f, (*loc, "on", intent), "a transition needs `to`, `say` or both")
        if stage.otherwise:
            need_stage(stage.otherwise.then, (*loc, "otherwise", "then"))
            need_script(stage.otherwise.say, (*loc, "otherwise", "say"))
        if stage.compliance and stage.compliance.fallback:
            for script_id in stage.compliance.fallback:
                need_script(script_id, (*loc, "compliance", "fallback", script_id))
            total = sum(stage.compliance.fallback.values())
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                problems.add(
                    f, (*loc, "compliance", "fallback"), f"weights sum to {total:g}, not 1"
                )
        _check_stage_kind(name, stage, problems)
    _check_effects(flow, intents, scripts, problems)


def _check_effects(
    flow: schema.FlowFile,
    intents: schema.IntentsFile | None,
    scripts: schema.ScriptsFile | None,
    problems: Problems,
) -> None:
    """Script effects and preconditions, milestones and the pure_llm filter (engine/effects.py):
    an ``ends`` must name an outcome of an end stage, a required flag must be set by something."""
    f, s = "flow.yaml", "scripts.yaml"
    outcomes = sorted(
        {st.outcome for st in flow.stages.values() if st.kind == "end" and st.outcome}
    )
    known = f"outcomes: {', '.join(outcomes)}"
    flags = {flag for script in (scripts.scripts if scripts else []) for flag in script.sets}
    flags |= set(flow.milestones)
    for name, milestone in flow.milestones.items():
        loc: Loc = ("milestones", name)
        stage = flow.stages.get(milestone.stage)
        if stage is None or stage.kind == "end":
            problems.add(f, (*loc, "stage"), f"{milestone.stage!r} is not a non-end stage")
        for i, intent in enumerate(milestone.intents):
            if intents is not None and intent not in intents.intents:
                problems.add(f, (*loc, "intents", i), f"intent {intent!r} is not in intents.yaml")
        if milestone.ends is not None and milestone.ends not in outcomes:
            problems.add(f, (*loc, "ends"), f"unknown outcome {milestone.ends!r} ({known})")
    for i, script in enumerate(scripts.scripts if scripts else []):
        if script.ends is not None and script.ends not in outcomes:
            problems.add(s, ("scripts", i, "ends"), f"unknown outcome {script.ends!r} ({known})")
        for j, flag in enumerate(script.requires):
            if flag not in flags:
                problems.add(
                    s,
                    ("scripts", i, "requires", j),
                    f"flag {flag!r} is never set: no script `sets` it and no milestone is "
                    "named so, so this script could never be sent",
                )
    pool = flow.compliance.pure_llm.fallback
    if pool:
        loc = ("compliance", "pure_llm", "fallback")
        ids = {script.id for script in (scripts.scripts if scripts else [])}
        for script_id in pool:
            if scripts is not None and script_id not in ids:
                problems.add(
                    f, (*loc, script_id), f"script id {script_id!r} is not in scripts.yaml"
                )
        total = sum(pool.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            problems.add(f, loc, f"weights sum to {total:g}, not 1")


def _check_stage_kind(name: str, stage: schema.Stage, problems: Problems) -> None:
    f, loc = "flow.yaml", ("stages", name)
    if stage.kind == "end":
        if not stage.outcome:
            problems.add(f, (*loc, "outcome"), "end stages need an outcome")
        if not stage.say:
            problems.add(
                f, (*loc, "say"), "end stages need a `say` script: the caller's last words"
            )
        for key in ("on", "otherwise", "generation", "compliance"):
            if getattr(stage, key):
                problems.add(f, (*loc, key), f"end stages take no `{key}`")
        return
    if stage.outcome:
        problems.add(f, (*loc, "outcome"), "only end stages have an outcome")
    if stage.kind == "scripted":
        if not stage.say:
            problems.add(f, (*loc, "say"), "scripted stages need a `say` script")
        for key in ("generation", "compliance"):
            if getattr(stage, key):
                problems.add(f, (*loc, key), f"`{key}` applies to llm stages only")
        if stage.otherwise and stage.otherwise.max > 0 and not stage.otherwise.say:
            problems.add(f, (*loc, "otherwise", "say"), "a re-prompt script is needed when max > 0")
    if stage.kind == "llm" and not (stage.goal and stage.goal.strip()):
        problems.add(f, (*loc, "goal"), "llm stages need a goal: it is the model's task")
    if not stage.on and not stage.otherwise:
        problems.add(f, loc, "the stage has no way out: add `on` transitions or `otherwise`")


def _check_reachability(flow: schema.FlowFile, problems: Problems) -> None:
    stages = flow.stages
    if flow.start not in stages:
        return
    seen, queue = {flow.start}, deque([flow.start])
    extra = [flow.on_hangup] + [tr.to for tr in flow.global_.values()]
    for target in extra:
        if target in stages and target not in seen:
            seen.add(target)
            queue.append(target)
    while queue:
        stage = stages[queue.popleft()]
        targets = [tr.to for tr in stage.on.values()]
        if stage.otherwise:
            targets.append(stage.otherwise.then)
        for target in targets:
            if target in stages and target not in seen:
                seen.add(target)
                queue.append(target)
    for name in stages:
        if name not in seen:
            problems.add("flow.yaml", ("stages", name), f"stage {name!r} is unreachable from start")


def _check_generation(flow: schema.FlowFile, problems: Problems) -> dict[str, GenerationParams]:
    """Merge flow-level and stage-level generation blocks and check the combined rules."""
    resolved: dict[str, GenerationParams] = {}
    try:
        default = GenerationParams().merged(flow.llm.generation)
    except ValidationError as exc:
        for err in exc.errors():
            problems.add("flow.yaml", ("llm", "generation"), err["msg"])
        return resolved
    for name, stage in flow.stages.items():
        if stage.kind == "end":
            continue
        try:
            resolved[name] = default.merged(stage.generation)
        except ValidationError as exc:
            loc = ("stages", name, "generation") if stage.generation else ("llm", "generation")
            for err in exc.errors():
                problems.add("flow.yaml", loc, err["msg"])
    resolved["__default__"] = default
    return resolved


def _check_candidates(flow: schema.FlowFile, scripts: schema.ScriptsFile, problems: Problems):
    for name, stage in flow.stages.items():
        if stage.kind != "llm":
            continue
        if not _candidate_ids(flow, name, stage, scripts):
            problems.add(
                "flow.yaml",
                ("stages", name),
                "no approved script in scripts.yaml lists this llm stage: the compliance "
                "filter would have nothing to send",
            )


def _forbidden_blocks(flow: schema.FlowFile) -> list[tuple[Loc, schema.Forbidden]]:
    blocks: list[tuple[Loc, schema.Forbidden]] = [(("compliance",), flow.compliance.forbidden)]
    for name, stage in flow.stages.items():
        if stage.compliance and stage.compliance.forbidden:
            blocks.append((("stages", name, "compliance"), stage.compliance.forbidden))
    return blocks


def _check_compliance_rules(flow: schema.FlowFile, problems: Problems) -> None:
    """The embedder must be registered and every forbidden pattern must compile."""
    from engine.compliance.embedders import available_embedders
    from engine.compliance.rules import pattern_problem

    if flow.compliance.embedder not in available_embedders():
        known = ", ".join(available_embedders())
        problems.add(
            "flow.yaml",
            ("compliance", "embedder"),
            f"unknown embedder {flow.compliance.embedder!r} (known: {known})",
        )
    for loc, block in _forbidden_blocks(flow):
        for i, pattern in enumerate(block.patterns):
            problem = pattern_problem(pattern)
            if problem:
                problems.add("flow.yaml", (*loc, "forbidden", "patterns", i), problem)


def _check_rules_spare_scripts(
    flow: schema.FlowFile, scripts: schema.ScriptsFile, problems: Problems
) -> None:
    """A forbidden rule that matches an approved wording of a stage it applies to contradicts
    the library: in pass mode a faithful paraphrase would always fall back."""
    from engine.compliance.rules import forbidden_hits, pattern_problem

    llm_capable = [name for name, st in flow.stages.items() if st.kind != "end"]
    for loc, block in _forbidden_blocks(flow):
        names = llm_capable if loc == ("compliance",) else [loc[1]]
        rules = [("phrases", i, v) for i, v in enumerate(block.phrases)]
        rules += [("patterns", i, v) for i, v in enumerate(block.patterns)]
        for kind, i, value in rules:
            if kind == "patterns" and pattern_problem(value):
                continue  # already reported as an invalid pattern
            phrases, patterns = ([value], []) if kind == "phrases" else ([], [value])
            clash = next(
                (
                    (name, script.id, text)
                    for name in names
                    for script in scripts.scripts
                    if script.id in _candidate_ids(flow, name, flow.stages[name], scripts)
                    or script.id in _fallback_ids(flow, flow.stages[name])
                    for text in (script.text, *script.wordings)
                    if forbidden_hits(text, phrases, patterns)
                ),
                None,
            )
            if clash:
                name, script_id, text = clash
                problems.add(
                    "flow.yaml",
                    (*loc, "forbidden", kind, i),
                    f"matches approved script {script_id!r} of stage {name!r}: {text!r}",
                )


def _fallback_ids(flow: schema.FlowFile, stage: schema.Stage) -> set[str]:
    ids = {flow.compliance.universal_fallback}
    if stage.compliance and stage.compliance.fallback:
        ids |= set(stage.compliance.fallback)
    return ids


def _candidate_ids(
    flow: schema.FlowFile, name: str, stage: schema.Stage, scripts: schema.ScriptsFile
) -> tuple[str, ...]:
    """Approved scripts of a stage the LLM draft may be matched to (fallbacks excluded)."""
    excluded = _fallback_ids(flow, stage)
    return tuple(
        s.id
        for s in scripts.scripts
        if (name in s.stages or "*" in s.stages) and s.id not in excluded
    )


def _compile(
    folder: Path,
    flow: schema.FlowFile,
    intents: schema.IntentsFile,
    scripts: schema.ScriptsFile,
    generation: dict[str, GenerationParams],
    raw: dict[str, Any],
) -> Flow:
    def transition(tr: schema.TransitionSpec) -> Transition:
        return Transition(to=tr.to, say=tr.say)

    stages: dict[str, Stage] = {}
    for name, st in flow.stages.items():
        policy = None
        if st.kind != "end":
            sc = st.compliance or schema.StageCompliance()
            policy = CompliancePolicy(
                threshold=sc.threshold if sc.threshold is not None else flow.compliance.threshold,
                mode=sc.mode or flow.compliance.mode,
                fallback=tuple(sorted((sc.fallback or {}).items())),
                universal_fallback=flow.compliance.universal_fallback,
                candidates=_candidate_ids(flow, name, st, scripts),
                margin=sc.margin if sc.margin is not None else flow.compliance.margin,
                decoding=sc.decoding or flow.compliance.decoding,
                **_forbidden_fields(flow.compliance.forbidden, sc.forbidden),
            )
        say_text = next((s.text for s in scripts.scripts if s.id == st.say), "") if st.say else ""
        stages[name] = Stage(
            name=name,
            kind=st.kind,
            say=st.say,
            goal=(st.goal or say_text).strip(),
            on=MappingProxyType({k: transition(v) for k, v in st.on.items()}),
            otherwise=Otherwise(st.otherwise.say, st.otherwise.max, st.otherwise.then)
            if st.otherwise
            else None,
            outcome=st.outcome,
            generation=generation.get(name),
            compliance=policy,
        )
    slots = {name: compile_slot(name, decl) for name, decl in flow.slots.items()}
    script_map = {
        s.id: Script(
            id=s.id,
            stages=tuple(s.stages),
            act=s.act,
            text=s.text,
            wordings=tuple(s.wordings),
            ends=s.ends,
            sets=tuple(s.sets),
            requires=tuple(s.requires),
            once=s.once,
        )
        for s in scripts.scripts
    }
    pure = flow.compliance.pure_llm
    pure_policy = CompliancePolicy(
        threshold=pure.threshold if pure.threshold is not None else flow.compliance.threshold,
        mode=flow.compliance.mode,
        fallback=tuple(sorted((pure.fallback or {}).items())),
        universal_fallback=flow.compliance.universal_fallback,
        candidates=tuple(script_map),  # the whole library; engine/effects.py narrows it per turn
        margin=pure.margin if pure.margin is not None else flow.compliance.margin,
        decoding=flow.compliance.decoding,  # both arms decode alike (a fair comparison)
        **_forbidden_fields(flow.compliance.forbidden, None),
    )
    return Flow(
        name=flow.flow,
        version=content_hash(raw, HASH_SCHEME),
        label=flow.version,
        language=flow.language,
        description=flow.description,
        folder=folder,
        start=flow.start,
        on_hangup=flow.on_hangup,
        slot_defaults=MappingProxyType({k: v.default for k, v in slots.items()}),
        slots=MappingProxyType(slots),
        classifier_threshold=flow.classifier.threshold,
        classifier_margin=flow.classifier.margin,
        classifier_model=flow.classifier.model,
        classifier_calibrate=flow.classifier.calibrate,
        classifier_max_accuracy_drop=flow.classifier.max_accuracy_drop,
        embedder=flow.compliance.embedder,
        persona=flow.llm.persona,
        intent_note=flow.llm.intent_note,
        backend=flow.llm.backend,
        backend_options=MappingProxyType(dict(flow.llm.backend_options)),
        default_generation=generation["__default__"],
        global_on=MappingProxyType({k: transition(v) for k, v in flow.global_.items()}),
        stages=MappingProxyType(stages),
        scripts=MappingProxyType(script_map),
        intents=MappingProxyType({k: tuple(v) for k, v in intents.intents.items()}),
        library_hash=content_hash(raw["scripts.yaml"], "scripts:v1:"),
        early_stop=flow.compliance.early_stop,
        universal_fallback=flow.compliance.universal_fallback,
        **_forbidden_fields(flow.compliance.forbidden, None),
        milestones=tuple(
            Milestone(name, m.stage, tuple(m.intents), m.ends)
            for name, m in flow.milestones.items()
        ),
        pure_llm=pure_policy,
        tuning=compile_tuning(flow.tuning),
    )


def _forbidden_fields(
    flow_level: schema.Forbidden, stage_level: schema.Forbidden | None
) -> dict[str, tuple[str, ...]]:
    """Stage rules are added to the flow's (order kept, duplicates dropped)."""
    blocks = [flow_level, *([stage_level] if stage_level else [])]
    return {
        "forbidden_phrases": tuple(dict.fromkeys(p for b in blocks for p in b.phrases)),
        "forbidden_patterns": tuple(dict.fromkeys(p for b in blocks for p in b.patterns)),
    }


def load_flow(folder: str | Path) -> Flow:
    """Load and validate a flow folder; raise :class:`FlowValidationError` listing every problem."""
    folder = Path(folder)
    problems = Problems(folder)
    if not folder.is_dir():
        raise FlowValidationError([FlowProblem(str(folder), None, "", "not a flow folder")])
    parsed = _parse_files(problems)
    flow = parsed.get("flow.yaml")
    intents = parsed.get("intents.yaml")
    scripts = parsed.get("scripts.yaml")
    if isinstance(flow, schema.FlowFile):
        _check_references(flow, intents, scripts, problems)  # type: ignore[arg-type]
        _check_reachability(flow, problems)
        generation = _check_generation(flow, problems)
        _check_compliance_rules(flow, problems)
        check_tuning(flow, intents, scripts, problems)  # type: ignore[arg-type]
        if isinstance(scripts, schema.ScriptsFile):
            _check_candidates(flow, scripts, problems)
            _check_rules_spare_scripts(flow, scripts, problems)
    problems.raise_if_any()
    assert isinstance(intents, schema.IntentsFile) and isinstance(scripts, schema.ScriptsFile)
    raw = {name: problems.located[name].data for name in schema.FILES}
    return attach_adapter(_compile(folder, flow, intents, scripts, generation, raw), flow, problems)
