"""The Engine: one code path for every turn, whoever calls it (CLI, HTTP service, simulator).

A turn has three phases:

1. read: the session's snapshot (stage, counters, slots, recent history), no lock held;
2. compute: classify, decide (pure), realise the reply (a script, or an LLM draft through the
   compliance filter). This is the slow part, and it holds no database lock, so other sessions'
   turns (and batched LLM calls across them) proceed in parallel, on SQLite too;
3. write: one short transaction that locks the conversation row, checks that no other turn of
   this session was written since the read (optimistic concurrency), and writes the turn, stage
   events, compliance audit row and the updated snapshot together. On a conflict the turn is
   computed again from the new state, so turns of one session are serialised.

The read is one statement that also finds a turn already stored under the request's
idempotency key; reads and writes of the turn path use SQLAlchemy Core rows, not ORM objects
(see storage/repository.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from engine.compliance import ComplianceFilter, ComplianceResult, create_embedder
from engine.drafting import draft_reply
from engine.errors import ConcurrentTurns, IdempotencyKeyReused, SessionEnded
from engine.experiments import Assignment, Experiment, apply_overrides, resolve_arm
from engine.experiments import load_experiments as _load_experiments
from engine.flow.classifier import flow_classifier
from engine.flow.loader import load_flow
from engine.flow.model import CompliancePolicy, Flow
from engine.flow.slots import resolve_slots
from engine.idempotency import check_retry, derived_session_id, fingerprint
from engine.llm import LLMBackend, create_backend
from engine.llm.prompt import build_messages
from engine.milestones import Finding, Progress, Ruler, Step
from engine.policy import Arm, Decision, ReplyPlan, decide, entry
from engine.pure_llm import decide_pure, pure_reply
from engine.reply import Reply, reply_from_row
from engine.session_locks import SessionLocks
from engine.text import storable
from intents import OUT_OF_SCOPE, IntentClassifier, IntentPrediction
from storage import Store
from storage.models import StageEvent, Turn, utcnow
from storage.repository import Snapshot, StoredTurn

MAX_ATTEMPTS = 5  # optimistic-concurrency retries before giving up on a contended session
HISTORY_TURNS = 12  # earlier turns read for the LLM prompt (it keeps 6 to 11, see llm.prompt)
ARM_CACHE_SIZE = 10_000  # sessions whose (mode, arm flow) is remembered; assignments never change


def draft_seed(snapshot: Snapshot) -> int:
    """The sampling seed of an LLM draft: fixed by the session and the turn, so a replayed or
    simulated call samples the same draft again (a retried turn, a re-run simulation)."""
    digest = hashlib.sha256(f"{snapshot.id}:{snapshot.turn_count}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Engine:
    """Runs conversations of one flow. Stateless between calls: all state is in the Store."""

    def __init__(
        self,
        flow: Flow,
        classifier: IntentClassifier,
        backend: LLMBackend,
        compliance: ComplianceFilter,
        store: Store,
        clock: Callable[[], float] = time.perf_counter,
        experiments: Mapping[str, Experiment] | None = None,
    ):
        self.flow = flow
        self.experiments = dict(experiments or {})
        self._arm_flows: dict[str, Flow] = {}
        self._session_arms: dict[str, tuple[str, Flow]] = {}
        self.classifier = classifier
        self.backend = backend
        self.compliance = compliance
        self.store = store
        self.clock = clock
        self.ruler = Ruler(flow)  # the funnel's one ruler, the same for every arm
        self._session_locks = SessionLocks()

    @classmethod
    def from_flow_dir(
        cls,
        flow_dir: str | Path,
        db_url: str = "sqlite:///salesbot.db",
        *,
        backend: LLMBackend | None = None,
        backend_name: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        embedder_name: str | None = None,
        pool_size: int | None = None,
    ) -> Engine:
        """Build an engine with the default parts for a flow folder.

        The LLM backend is the flow's (``llm.backend`` in flow.yaml) unless the deployment names
        one (``backend_name``); options given here extend the flow's ``llm.backend_options``.
        ``pool_size``: database connections to keep (the threads calling the engine at once).
        """
        flow = load_flow(flow_dir)
        classifier = flow_classifier(flow)
        embedder = create_embedder(embedder_name or flow.embedder)
        return cls(
            flow=flow,
            classifier=classifier,
            backend=backend or _flow_backend(flow, backend_name, backend_options),
            compliance=ComplianceFilter(flow, embedder),
            store=Store(db_url, pool_size=pool_size),
            experiments=_load_experiments(flow_dir, flow),
        )

    # -- public API -------------------------------------------------------------------------

    def start(
        self,
        customer_id: str,
        slots: Mapping[str, Any] | None = None,
        *,
        arm: str | None = None,
        session_id: str | None = None,
        experiment: str | None = None,
        assignment: Assignment | Mapping[str, Any] | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reply:
        """Open a conversation and return the bot's opening line.

        ``arm`` alone is a mode (``hybrid``, the default, or ``pure_llm``). With an
        ``experiment`` loaded from experiments.yaml the arm is assigned by hash of the unit
        (``arm`` then forces one), or taken from a precomputed ``assignment``; the record is
        stored once, on the conversation.

        With an ``idempotency_key`` (the session id is then derived from it unless given), a
        retried start returns the opening reply stored the first time and writes nothing; the
        same key with another request raises :class:`~engine.errors.IdempotencyKeyReused`.
        """
        if session_id is None:
            keyed = idempotency_key is not None
            session_id = derived_session_id(idempotency_key) if keyed else uuid.uuid4().hex
        request = None
        if idempotency_key is not None:
            body = dict(customer_id=str(customer_id), slots=dict(slots or {}), arm=arm,
                        experiment=experiment, assignment=assignment, run_id=run_id)  # fmt: skip
            request = fingerprint("start", session_id, body)
        arm_name, mode, record = resolve_arm(
            self.experiments,
            customer_id=str(customer_id),
            session_id=session_id,
            arm=arm,
            experiment=experiment,
            assignment=assignment,
        )
        experiment = experiment or record.get("experiment")
        arm_flow = self._arm_flow(record)
        resolved = resolve_slots(self.flow, slots)  # typed, hard rules: MissingSlot/InvalidSlot
        started = self.clock()
        snapshot = Snapshot.opening(session_id, arm_name, self.flow.start, resolved)
        if mode == "pure_llm":  # even the opening line is the LLM's
            decision = decide_pure(self.ruler, Progress(), None)
        else:
            decision = entry(self.flow, self.flow.start, None, mode, "start")  # type: ignore[arg-type]
        planned = self._plan(snapshot, decision, None, None, started, {}, arm_flow, mode)  # type: ignore[arg-type]
        now = utcnow()
        conversation = {
            "id": snapshot.id,
            "flow_name": self.flow.name,
            "flow_version": self.flow.version,
            "customer_id": storable(str(customer_id)),
            "arm": arm_name,
            "experiment": experiment,
            "assignment": record,
            "run_id": run_id,
            "slots": resolved,
            "status": "active",
            "outcome": None,
            "end_reason": None,
            "created_at": now,
            "ended_at": None,
            **self._changes(planned),
        }
        planned.turn.update(idempotency_key=idempotency_key, request_hash=request)
        try:
            self.store.create_conversation(
                conversation, planned.turn, planned.events, planned.audit
            )
        except IntegrityError:
            if idempotency_key is None:
                raise
            opened, stored = self.store.read_turn(session_id, idempotency_key, 0)
            if stored is None:  # the session exists, but another request opened it
                raise IdempotencyKeyReused(idempotency_key) from None
            return self._replayed(opened, stored, idempotency_key, request)
        self._remember_arm(snapshot.id, (mode, arm_flow))
        return planned.reply

    def turn(
        self,
        session_id: str,
        text: str,
        *,
        idempotency_key: str | None = None,
        idempotency_scope: str | None = None,
    ) -> Reply:
        """Handle one thing the caller said and return the bot's reply.

        With an ``idempotency_key``, a retried request returns the reply stored the first time
        and writes nothing new; the same key with another text raises
        :class:`~engine.errors.IdempotencyKeyReused`. With an ``idempotency_scope`` (the caller's
        identity, e.g. the HTTP service's API-key name) the key is one request of that scope:
        the same key on another of its sessions raises too, instead of opening a new turn.
        """
        request = None
        if idempotency_key is not None:
            request = fingerprint("turn", session_id, {"text": text})
        for _ in range(MAX_ATTEMPTS):
            with self._session_locks.hold(session_id):
                snapshot, stored = self.store.read_turn(session_id, idempotency_key, HISTORY_TURNS)
                if stored is not None:
                    return self._replayed(snapshot, stored, idempotency_key, request)
                if snapshot.status != "active":
                    raise SessionEnded(session_id, snapshot.outcome)
                if self._key_reused(idempotency_key, idempotency_scope, session_id):
                    raise IdempotencyKeyReused(str(idempotency_key))
                started = self.clock()
                prediction = self.classifier.predict_one(text)
                latencies = {"classify_ms": (self.clock() - started) * 1000}
                mode, arm_flow = self._session_arm(snapshot)
                if mode == "pure_llm":  # no state machine: the ruler says where the call is
                    heard, ends = self.ruler.hear(
                        Progress.from_json(snapshot.progress), prediction.intent
                    )
                    decision = decide_pure(self.ruler, heard, ends)
                else:
                    decision = decide(
                        self.flow, snapshot.stage, snapshot.stage_turns, prediction.intent, mode
                    )
                planned = self._plan(
                    snapshot, decision, text, prediction, started, latencies, arm_flow, mode
                )
                planned.turn.update(
                    idempotency_key=idempotency_key,
                    request_hash=request,
                    idempotency_scope=idempotency_scope if idempotency_key else None,
                )
                written = self.store.write_turn(
                    session_id,
                    snapshot.turn_count,
                    self._changes(planned),
                    planned.turn,
                    planned.events,
                    planned.audit,
                )  # raises SessionEnded if the session ended meanwhile
                if not written:
                    continue  # another process wrote a turn meanwhile: compute again
                return planned.reply
        raise ConcurrentTurns(session_id)

    def _key_reused(self, key: str | None, scope: str | None, session_id: str) -> bool:
        """A scoped key already written on another session: a reused key, not a new turn."""
        if key is None or scope is None:
            return False
        return self.store.key_used_elsewhere(scope, key, session_id)

    def end(self, session_id: str, reason: str = "hangup") -> None:
        """End a conversation (the caller hung up, the agent transferred, ...). Idempotent."""
        self.backend.release(session_id)  # free the session's cached prompt (KV cache)
        with self.store.locked(session_id) as (db, conversation):
            if conversation.status != "active":
                return
            stage = self.flow.on_hangup if reason == "hangup" else None
            if stage:
                db.add(
                    StageEvent(
                        conversation_id=session_id, turn_index=conversation.turn_count, stage=stage
                    )
                )
                conversation.stage = stage
                conversation.outcome = self.flow.stages[stage].outcome
            else:
                conversation.outcome = reason
            conversation.status = "ended"
            conversation.end_reason = reason
            conversation.ended_at = conversation.updated_at = utcnow()

    def transcript(self, session_id: str) -> list[Turn]:
        self.store.get(session_id)  # raises SessionNotFound
        return self.store.turns(session_id)

    # -- one turn's work ----------------------------------------------------------------------

    @staticmethod
    def _replayed(
        snapshot: Snapshot, stored: StoredTurn, key: str | None, request: str | None
    ) -> Reply:
        """A retried request's stored reply (IdempotencyKeyReused if the request differs)."""
        assert key is not None
        check_retry(stored, key, request)
        ended = snapshot.status != "active" and snapshot.turn_count == stored["turn_index"]
        return reply_from_row(stored, snapshot.outcome if ended else None, replayed=True)

    def _arm_flow(self, record: Mapping[str, Any]) -> Flow:
        """The flow an arm runs: the base flow with the assignment's overrides applied."""
        overrides = record.get("overrides") or {}
        if not overrides:
            return self.flow
        key = json.dumps(overrides, sort_keys=True)
        flow = self._arm_flows.get(key)
        if flow is None:
            flow = self._arm_flows[key] = apply_overrides(self.flow, overrides)
        return flow

    def _session_arm(self, snapshot: Snapshot) -> tuple[Arm, Flow]:
        """(mode, arm flow) of a session: from its stored assignment, remembered per process."""
        known = self._session_arms.get(snapshot.id)
        if known is None:
            record = snapshot.assignment
            if record is None:
                record = self.store.get(snapshot.id).assignment or {}
            known = (record.get("mode") or snapshot.arm, self._arm_flow(record))
            self._remember_arm(snapshot.id, known)
        return known  # type: ignore[return-value]

    def _remember_arm(self, session_id: str, arm: tuple[str, Flow]) -> None:
        if len(self._session_arms) >= ARM_CACHE_SIZE:
            self._session_arms.clear()
        self._session_arms[session_id] = arm

    def _plan(
        self,
        snapshot: Snapshot,
        decision: Decision,
        text: str | None,
        prediction: IntentPrediction | None,
        started: float,
        latencies: dict[str, float],
        arm_flow: Flow | None = None,
        mode: Arm = "hybrid",
    ) -> PlannedTurn:
        """Everything a turn will write, computed without touching the database.

        Whatever chose the reply, the ruler (engine/milestones.py) then hears the customer and
        the script sent: its stage events are the ones stored, the script's effects apply (an
        ``ends`` effect ends the call), and its process-order findings are stored on the turn.
        """
        turn_index = snapshot.turn_count if text is None else snapshot.turn_count + 1
        result: ComplianceResult | None = None
        raw: str | None = None
        error: str | None = None
        attempted: tuple[Finding, ...] = ()
        progress = Progress.from_json(snapshot.progress)
        if text is not None:
            progress, _ = self.ruler.hear(progress, prediction.intent if prediction else None)
        if decision.reply.kind == "script":
            script_id = decision.reply.script_id
            assert script_id is not None
            reply_text, source = self.flow.render(script_id, dict(snapshot.slots)), "script"
            policy = (arm_flow or self.flow).stages[decision.reply.stage].compliance
            result = self.compliance.screen_script(
                reply_text, decision.reply.stage, policy, snapshot.id, snapshot.slots
            )  # None unless the slot values filled in make the script break a hard rule
            if result is not None:
                raw = reply_text
                reply_text, script_id, source = result.text, result.script_id, result.source
        elif mode == "pure_llm":
            raw, result, error, attempted = pure_reply(
                arm_flow or self.flow, self.backend, self.compliance, self.ruler, progress,
                history=snapshot.history, earlier=_earlier(snapshot), slots=dict(snapshot.slots),
                text=text, session_id=snapshot.id, seed=draft_seed(snapshot),
                latencies=latencies, clock=self.clock,
            )  # fmt: skip
            reply_text, script_id, source = result.text, result.script_id, result.source
        else:
            raw, result, error = self._llm_reply(
                snapshot, decision.reply, text, latencies, arm_flow or self.flow, progress,
                intent=confident_intent(prediction),
            )  # fmt: skip
            reply_text, script_id, source = result.text, result.script_id, result.source
        assert script_id is not None
        step = self.ruler.said(progress, script_id)
        decision = _with_step(decision, step, mode)
        latencies["total_ms"] = (self.clock() - started) * 1000
        now = utcnow()
        turn = {
            "conversation_id": snapshot.id,
            "turn_index": turn_index,
            "user_text": storable(text) if text is not None else None,
            "reply_text": reply_text,
            "script_id": script_id,
            "stage_before": None if text is None else snapshot.stage,
            "stage": decision.stage,
            "source": source,
            "intent": prediction.intent if prediction else None,
            "confidence": prediction.confidence if prediction else None,
            "margin": prediction.margin if prediction else None,
            "variant": result.variant if result else None,
            "latencies": latencies,
            "idempotency_key": None,
            "request_hash": None,
            "findings": [f.as_dict() for f in (*attempted, *step.findings)] or None,
            "created_at": now,
        }
        events = [
            dict(conversation_id=snapshot.id, turn_index=turn_index, stage=s, created_at=now)
            for s in step.entered
        ]
        audit = None
        if result is not None:
            audit = {
                "conversation_id": snapshot.id,
                "turn_index": turn_index,
                "stage": decision.reply.stage,
                "raw_text": storable(raw) if raw is not None else None,
                "decision": result.decision,
                "script_id": result.script_id,
                "variant": result.variant,
                "score": result.score,
                "threshold": result.threshold,
                "top_k": result.audit_top_k(),
                "rule_hits": [hit.as_dict() for hit in result.rule_hits],
                "embedder": self.compliance.embedder_name,
                "library_hash": self.flow.library_hash,
                "adapter_hash": _adapter_hash(self.backend),
                "error": error,
                "latencies": {"embed_ms": result.embed_ms, "match_ms": result.match_ms},
                "created_at": now,
            }
        reply = reply_from_row(turn, outcome=decision.outcome)
        return PlannedTurn(reply, turn, events, audit, decision, step.progress.as_json())

    @staticmethod
    def _changes(planned: PlannedTurn) -> dict[str, Any]:
        """The conversation's new snapshot after ``planned`` (column -> value)."""
        decision = planned.decision
        now = planned.turn["created_at"]
        changes = {
            "stage": decision.stage,
            "stage_turns": decision.stage_turns,
            "turn_count": planned.turn["turn_index"],
            "progress": planned.progress,
            "updated_at": now,
        }
        if decision.outcome is not None:
            changes.update(
                status="ended", outcome=decision.outcome, end_reason=decision.reason, ended_at=now
            )
        return changes

    def _llm_reply(
        self,
        snapshot: Snapshot,
        plan: ReplyPlan,
        text: str | None,
        latencies: dict[str, float],
        arm_flow: Flow | None = None,
        progress: Progress | None = None,
        intent: str | None = None,
    ) -> tuple[str | None, ComplianceResult, str | None]:
        stage = (arm_flow or self.flow).stages[plan.stage]  # an arm may override its parameters
        assert stage.compliance is not None and stage.generation is not None
        policy = self._stage_policy(stage.compliance, plan.stage, progress or Progress())
        stage = replace(stage, compliance=policy)  # the candidates that may be said now
        slots = dict(snapshot.slots)
        earlier = _earlier(snapshot)
        messages = build_messages(
            self.flow, stage, snapshot.history, slots, text, earlier, intent=intent
        )
        choices = None  # constrained decoding: the draft is one of these texts, chosen early
        if policy.decoding == "constrained" and self.backend.can_constrain:
            choices = self.compliance.candidate_texts(policy, slots) or None
        return draft_reply(
            self.backend, self.compliance, messages, stage, slots, latencies,
            session_key=snapshot.id, seed=draft_seed(snapshot),
            early_stop=(arm_flow or self.flow).early_stop, choices=choices, clock=self.clock,
        )  # fmt: skip

    def _stage_policy(
        self, policy: CompliancePolicy, stage: str, progress: Progress
    ) -> CompliancePolicy:
        """A hybrid LLM stage's policy for this moment: its candidates that may be said now
        (engine/effects.py) and that the ruler would place in ``stage`` (so the ruler and the
        state machine see the same stage: no FAQ answer counts as entering the pitch)."""
        allowed = self.ruler.available(progress, policy.candidates)
        placed = tuple(c for c in allowed if self.ruler.lands_on(progress.stage, c) == stage)
        candidates = placed or allowed
        if candidates == policy.candidates or not candidates:
            return policy
        return replace(policy, candidates=candidates)


def confident_intent(prediction: IntentPrediction | None) -> str | None:
    """The classifier's reading to hand the LLM stage: its intent, unless it was not sure."""
    if prediction is None or prediction.intent == OUT_OF_SCOPE:
        return None
    return prediction.intent


def _earlier(snapshot: Snapshot) -> int:
    """Exchanges of the call before the ones read into ``snapshot.history``."""
    return max(0, snapshot.turn_count + 1 - len(snapshot.history))


def _with_step(decision: Decision, step: Step, mode: Arm) -> Decision:
    """The decision as the turn will store it: in pure_llm the stage is the ruler's; in both
    arms a script with an ``ends`` effect ends the call with its outcome."""
    if mode == "pure_llm":
        outcome = decision.outcome or step.outcome
        reason = decision.reason if decision.outcome else ("script_ends" if outcome else "playbook")
        return replace(
            decision, stage=step.progress.stage, stage_turns=0, outcome=outcome, reason=reason
        )
    if decision.outcome is None and step.outcome is not None:
        return replace(
            decision, stage=step.progress.stage, outcome=step.outcome, reason="script_ends"
        )
    return decision


ADAPTER_BACKENDS = ("transformers", "llamacpp")


def flow_backend_options(flow: Flow, name: str) -> dict[str, Any]:
    """What the flow says about backend ``name``: its ``llm.backend_options`` when it is the
    flow's own backend, and its tuned adapter for either in-process backend (an
    OpenAI-compatible server loads its adapter itself: docs/tuning.md)."""
    options = dict(flow.backend_options) if name == flow.backend else {}
    if flow.adapter and name in ADAPTER_BACKENDS:
        options["adapter"] = flow.adapter
    return options


def _flow_backend(flow: Flow, name: str | None, options: Mapping[str, Any] | None) -> LLMBackend:
    """The flow's backend (or the deployment's choice), loaded now: a lazy load on the first
    LLM turn would count against that turn's deadline and send its customer a fallback."""
    chosen = name or flow.backend
    backend = create_backend(
        chosen, **{**flow_backend_options(flow, chosen), **dict(options or {})}
    )
    backend.load()
    return backend


def _adapter_hash(backend: Any) -> str | None:
    """The tuned adapter merged into the serving model (through any wrapper), for the audit."""
    while backend is not None:
        if getattr(backend, "adapter_hash", None):
            return backend.adapter_hash
        backend = getattr(backend, "inner", None)
    return None


@dataclass
class PlannedTurn:
    """The rows one turn will write (``turns``, ``stage_events`` and ``compliance_decisions``
    columns -> values) and the reply it will return."""

    reply: Reply
    turn: dict[str, Any]
    events: list[dict[str, Any]]
    audit: dict[str, Any] | None
    decision: Decision
    progress: dict[str, Any] | None = None  # the ruler's state after the turn
