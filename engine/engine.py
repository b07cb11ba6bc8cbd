"""The Engine: one code path for every turn, whoever calls it (CLI, HTTP service, simulator).

A turn: lock the session's row, classify the text, decide (pure), realise the reply (script, or
LLM draft through the compliance filter), and write the turn, stage events and compliance audit
row together with the updated snapshot in one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.compliance import ComplianceFilter, ComplianceResult, create_embedder
from engine.errors import MissingSlot, SalesbotError, SessionEnded
from engine.flow import Flow
from engine.flow_loader import load_flow
from engine.llm import BackendError, LLMBackend, create_backend
from engine.llm.prompt import build_messages
from engine.policy import ARMS, Arm, Decision, ReplyPlan, decide, entry
from engine.reply import Reply
from engine.text import storable
from intents import IntentClassifier, IntentPrediction, load_or_train
from storage import Store
from storage.models import ComplianceDecision, Conversation, StageEvent, Turn, utcnow


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
    ):
        self.flow = flow
        self.classifier = classifier
        self.backend = backend
        self.compliance = compliance
        self.store = store
        self.clock = clock

    @classmethod
    def from_flow_dir(
        cls,
        flow_dir: str | Path,
        db_url: str = "sqlite:///salesbot.db",
        *,
        backend: LLMBackend | None = None,
        backend_name: str = "transformers",
        backend_options: Mapping[str, Any] | None = None,
        embedder_name: str | None = None,
    ) -> Engine:
        """Build an engine with the default parts for a flow folder."""
        flow = load_flow(flow_dir)
        classifier = load_or_train(
            {k: list(v) for k, v in flow.intents.items()},
            language=flow.language,
            threshold=flow.classifier_threshold,
            margin=flow.classifier_margin,
        )
        embedder = create_embedder(embedder_name or flow.embedder)
        return cls(
            flow=flow,
            classifier=classifier,
            backend=backend or create_backend(backend_name, **dict(backend_options or {})),
            compliance=ComplianceFilter(flow, embedder),
            store=Store(db_url),
        )

    # -- public API -------------------------------------------------------------------------

    def start(
        self,
        customer_id: str,
        slots: Mapping[str, Any] | None = None,
        *,
        arm: Arm = "hybrid",
        session_id: str | None = None,
    ) -> Reply:
        """Open a conversation and return the bot's opening line."""
        if arm not in ARMS:
            raise SalesbotError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")
        known = {**self.flow.slot_defaults, **{k: v for k, v in (slots or {}).items()}}
        missing = [k for k, v in known.items() if v is None and k in self.flow.slot_defaults]
        if missing:
            raise MissingSlot(missing)
        resolved = {k: storable(str(v)) for k, v in known.items() if v is not None}
        started = self.clock()
        session_id = session_id or uuid.uuid4().hex
        decision = entry(self.flow, self.flow.start, None, arm, "start")
        with self.store.transaction() as db:
            conversation = Conversation(
                id=session_id,
                flow_name=self.flow.name,
                flow_version=self.flow.version,
                customer_id=storable(str(customer_id)),
                arm=arm,
                assignment={},
                slots=resolved,
                stage=self.flow.start,
                stage_turns=0,
                turn_count=0,
                status="active",
            )
            db.add(conversation)
            db.flush()
            return self._apply(db, conversation, decision, None, None, started, {})

    def turn(self, session_id: str, text: str) -> Reply:
        """Handle one thing the caller said and return the bot's reply."""
        started = self.clock()
        with self.store.locked(session_id) as (db, conversation):
            if conversation.status != "active":
                raise SessionEnded(session_id, conversation.outcome)
            prediction = self.classifier.predict_one(text)
            classified = self.clock()
            decision = decide(
                self.flow,
                conversation.stage,
                conversation.stage_turns,
                prediction.intent,
                conversation.arm,  # type: ignore[arg-type]
            )
            latencies = {"classify_ms": (classified - started) * 1000}
            return self._apply(db, conversation, decision, text, prediction, started, latencies)

    def end(self, session_id: str, reason: str = "hangup") -> None:
        """End a conversation (the caller hung up, the agent transferred, ...). Idempotent."""
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

    def _apply(
        self,
        db: Session,
        conversation: Conversation,
        decision: Decision,
        text: str | None,
        prediction: IntentPrediction | None,
        started: float,
        latencies: dict[str, float],
    ) -> Reply:
        turn_index = conversation.turn_count if text is None else conversation.turn_count + 1
        stage_before = None if text is None else conversation.stage
        slots = dict(conversation.slots)
        result: ComplianceResult | None = None
        error: str | None = None
        if decision.reply.kind == "script":
            script_id = decision.reply.script_id
            assert script_id is not None
            reply_text, source = self.flow.render(script_id, slots), "script"
            raw = None
        else:
            raw, result, error = self._llm_reply(db, conversation, decision.reply, text, latencies)
            reply_text, script_id, source = result.text, result.script_id, result.source
        latencies["total_ms"] = (self.clock() - started) * 1000

        db.add(
            Turn(
                conversation_id=conversation.id,
                turn_index=turn_index,
                user_text=storable(text) if text is not None else None,
                reply_text=reply_text,
                script_id=script_id,
                stage_before=stage_before,
                stage=decision.stage,
                source=source,
                intent=prediction.intent if prediction else None,
                confidence=prediction.confidence if prediction else None,
                margin=prediction.margin if prediction else None,
                variant=result.variant if result else None,
                latencies=latencies,
            )
        )
        for stage in decision.entered:
            db.add(StageEvent(conversation_id=conversation.id, turn_index=turn_index, stage=stage))
        if result is not None:
            db.add(
                ComplianceDecision(
                    conversation_id=conversation.id,
                    turn_index=turn_index,
                    stage=decision.reply.stage,
                    raw_text=storable(raw) if raw is not None else None,
                    decision=result.decision,
                    script_id=result.script_id,
                    variant=result.variant,
                    score=result.score,
                    threshold=result.threshold,
                    top_k={
                        "ids": [i for i, _ in result.top_k],
                        "scores": [s for _, s in result.top_k],
                    },
                    embedder=self.compliance.embedder_name,
                    library_hash=self.flow.library_hash,
                    error=error,
                    latencies={"embed_ms": result.embed_ms, "match_ms": result.match_ms},
                )
            )
        conversation.stage = decision.stage
        conversation.stage_turns = decision.stage_turns
        conversation.turn_count = turn_index
        conversation.updated_at = utcnow()
        if decision.outcome is not None:
            conversation.status = "ended"
            conversation.outcome = decision.outcome
            conversation.end_reason = decision.reason
            conversation.ended_at = conversation.updated_at
        return Reply(
            session_id=conversation.id,
            turn_index=turn_index,
            text=reply_text,
            script_id=script_id,
            stage=decision.stage,
            source=source,
            intent=prediction.intent if prediction else None,
            confidence=prediction.confidence if prediction else None,
            margin=prediction.margin if prediction else None,
            variant=result.variant if result else None,
            ended=decision.outcome is not None,
            outcome=decision.outcome,
            latencies_ms=latencies,
        )

    def _llm_reply(
        self,
        db: Session,
        conversation: Conversation,
        plan: ReplyPlan,
        text: str | None,
        latencies: dict[str, float],
    ) -> tuple[str | None, ComplianceResult, str | None]:
        stage = self.flow.stages[plan.stage]
        policy = stage.compliance
        assert policy is not None and stage.generation is not None
        history = [
            (t.user_text, t.reply_text)
            for t in db.scalars(
                select(Turn)
                .where(Turn.conversation_id == conversation.id)
                .order_by(Turn.turn_index.desc())
                .limit(8)
            )
        ][::-1]
        messages = build_messages(self.flow, stage, history, conversation.slots, text)
        before = self.clock()
        try:
            generation = self.backend.generate(messages, stage.generation)
        except BackendError as exc:
            latencies["generate_ms"] = (self.clock() - before) * 1000
            result = self.compliance.fallback(
                plan.stage, policy, conversation.id, conversation.slots
            )
            return None, result, str(exc)
        latencies["generate_ms"] = (self.clock() - before) * 1000
        before = self.clock()
        result = self.compliance.check(
            generation.text, plan.stage, policy, conversation.id, conversation.slots
        )
        latencies["compliance_ms"] = (self.clock() - before) * 1000
        return generation.text, result, None
