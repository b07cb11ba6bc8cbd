"""Funnel SQL against hand counts over the raw rows, on SQLite and PostgreSQL.

The conversations are made by the real Engine (mini flow, FakeBackend) driven by a seeded
random caller, so every path the funnel distinguishes occurs: conversions, refusals, hang-ups by
"bye" and by putting the phone down, fallbacks followed by either, calls still in progress.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.engine import Engine
from engine.experiments import load_experiments
from engine.llm import BackendError
from storage import Store
from storage import funnel as funnel_sql
from storage.models import ComplianceDecision, Conversation, StageEvent, Turn
from tests.fakes import FakeBackend
from tests.test_engine import make_engine
from tests.test_experiments import MINI_EXPERIMENTS

GOOD = {
    "greeting": "Hello, this is Sam. Am I speaking with Alex?",
    "pitch": "Would you like me to upgrade you to the faster plan?",
}
CALLS = 100
SAYINGS = ["yes please", "yes please", "sure", "no thanks", "hmm", "bye", "are you a robot"]


def experiment_yaml(name: str) -> str:
    return MINI_EXPERIMENTS.replace("mini_ab:", f"{name}:")


def drive(engine: Engine, backend: FakeBackend, experiment: str, n: int, seed: int) -> None:
    """``n`` seeded calls through the real engine; about one in ten is left in progress."""
    rng = random.Random(seed)
    for i in range(n):
        backend.default = GOOD["greeting"] if rng.random() < 0.85 else "zq xv"
        reply = engine.start(f"cust-{seed}-{i}", {"customer_name": "Alex"}, experiment=experiment)
        for _ in range(rng.randint(1, 6)):
            if reply.ended:
                break
            if rng.random() < 0.08:
                engine.end(reply.session_id, "hangup")
                break
            draft = GOOD["pitch"] if rng.random() < 0.55 else "zq xv"
            backend.default = draft
            if rng.random() < 0.04:
                backend.enqueue(BackendError("backend down"))
            reply = engine.turn(reply.session_id, rng.choice(SAYINGS))
            backend.queue.clear()


@dataclass
class Seeded:
    url: str
    experiment: str
    store: Store


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def seeded(request, tmp_path_factory) -> Seeded:
    """One seeded experiment per back end, shared by the funnel and report tests."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('funnel') / 'seeded.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    name = f"mini_ab_{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by all tests
    folder = tmp_path_factory.mktemp("experiments")
    (folder / "experiments.yaml").write_text(experiment_yaml(name), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SALESBOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        backend = FakeBackend()
        engine = make_engine(url, backend)
        engine.experiments = load_experiments(folder, engine.flow)
        drive(engine, backend, name, CALLS, seed=20250101)
    return Seeded(url, name, engine.store)


@dataclass
class Hand:
    """Counts made in Python from the raw rows, independently of storage.funnel's SQL."""

    assigned: dict
    active: dict
    successes: dict
    hangups: dict
    reached: dict
    compliance: dict
    errors: dict
    variants: dict
    latencies: dict
    outcomes: dict


def hand_counts(store: Store, experiment: str, success=("converted",), hangup=("hung_up",)):
    with store.transaction() as db:
        convs = list(db.scalars(select(Conversation).where(Conversation.experiment == experiment)))
        ids = [c.id for c in convs]
        events = list(db.scalars(select(StageEvent).where(StageEvent.conversation_id.in_(ids))))
        turns = list(db.scalars(select(Turn).where(Turn.conversation_id.in_(ids))))
        audits = list(
            db.scalars(
                select(ComplianceDecision).where(ComplianceDecision.conversation_id.in_(ids))
            )
        )
    by_id = {c.id: c for c in convs}
    h = Hand(*(defaultdict(int) for _ in range(4)), *(defaultdict(dict) for _ in range(6)))
    for c in convs:
        h.assigned[c.arm] += 1
        h.active[c.arm] += c.status == "active"
        h.successes[c.arm] += c.outcome in success
        h.hangups[c.arm] += c.end_reason == "hangup" or c.outcome in hangup
        key = c.outcome or "(in progress)"
        h.outcomes[c.arm][key] = h.outcomes[c.arm].get(key, 0) + 1
    stages_of = defaultdict(set)
    for e in events:
        stages_of[e.conversation_id].add(e.stage)
    for cid, stages in stages_of.items():
        arm = by_id[cid].arm
        for stage in stages:
            h.reached[arm][stage] = h.reached[arm].get(stage, 0) + 1
    turn_at = {(t.conversation_id, t.turn_index): t for t in turns}
    first_fallback: dict = {}
    for a in audits:
        arm = by_id[a.conversation_id].arm
        per_stage = h.compliance[arm].setdefault(a.stage, {})
        per_stage[a.decision] = per_stage.get(a.decision, 0) + 1
        h.errors[arm] = h.errors.get(arm, 0) + (a.error is not None)
        if a.decision == "fallback" and a.variant:
            key = (a.conversation_id, a.stage, a.variant)
            first_fallback[key] = min(first_fallback.get(key, a.turn_index), a.turn_index)
    for (cid, stage, variant), index in first_fallback.items():
        c = by_id[cid]
        following = turn_at.get((cid, index + 1))
        hung_up_by_reply = (
            following is not None
            and c.turn_count == index + 1
            and c.end_reason != "hangup"
            and c.outcome in hangup
        )
        calls, kept = h.variants[c.arm].get((stage, variant), (0, 0))
        continued = following is not None and not hung_up_by_reply
        h.variants[c.arm][(stage, variant)] = (calls + 1, kept + continued)
    for t in turns:
        if t.turn_index > 0 and "total_ms" in t.latencies:
            arm = by_id[t.conversation_id].arm
            h.latencies[arm].setdefault(t.source, []).append(t.latencies["total_ms"])
    return h


def test_funnel_sql_equals_hand_counts(seeded):
    counts = funnel_sql.collect(seeded.store.engine, seeded.experiment)
    hand = hand_counts(seeded.store, seeded.experiment)
    assert sum(counts.assigned.values()) == CALLS and set(counts.arms) == {"hybrid", "llm_strict"}
    assert counts.assigned == dict(hand.assigned)
    assert counts.active == dict(hand.active) and sum(counts.active.values()) > 0
    assert counts.successes == dict(hand.successes) and all(counts.successes.values())
    assert counts.hangups == dict(hand.hangups) and all(counts.hangups.values())
    assert counts.outcomes == dict(hand.outcomes)
    assert counts.reached == dict(hand.reached)
    assert counts.compliance == dict(hand.compliance)
    assert counts.llm_errors == dict(hand.errors) and sum(counts.llm_errors.values()) > 0
    variants = defaultdict(dict)
    for v in counts.variants:
        variants[v.arm][(v.stage, v.variant)] = (v.calls, v.continued)
    assert variants == hand.variants
    assert {k for arm in variants.values() for k in arm} == {
        ("pitch", "pitch.fallback_a"),
        ("pitch", "pitch.fallback_b"),
    }
    assert {arm: {s: sorted(v) for s, v in by.items()} for arm, by in counts.latencies.items()} == {
        arm: {s: sorted(v) for s, v in by.items()} for arm, by in hand.latencies.items()
    }
    # Stage order from the data: greeting before pitch; end stages are terminal.
    assert counts.stage_order.index("greeting") < counts.stage_order.index("pitch")
    assert {"converted", "refused", "hung_up"} <= counts.terminal_stages
    assert counts.success_stages == {"converted"}


def test_run_filter_and_unknown_experiment(seeded):
    bind = seeded.store.engine
    assert funnel_sql.collect(bind, seeded.experiment, run_id="no-such-run").assigned == {}
    assert funnel_sql.experiments_in(bind)[seeded.experiment] == CALLS
    designs = funnel_sql.designs(bind, seeded.experiment)
    assert len(designs) == 1 and designs[0].conversations == CALLS
    assert designs[0].record["design"]["control"] == "hybrid"


def fallback_engine(db_url: str, tmp_path: Path):
    backend = FakeBackend(default="zq xv")  # no script is similar: always a fallback
    engine = make_engine(db_url, backend)
    name = f"edge_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "experiments.yaml"
    path.write_text(experiment_yaml(name), encoding="utf-8")
    engine.experiments = load_experiments(path, engine.flow)
    return engine, name


def test_what_counts_as_continuing_after_a_fallback(db_url, tmp_path):
    engine, name = fallback_engine(db_url, tmp_path)
    expected = {}

    def call(customer: str, *after: str, continued: bool) -> None:
        reply = engine.start(customer, {"customer_name": "A"}, experiment=name, arm="hybrid")
        reply = engine.turn(reply.session_id, "yes that's me")
        assert reply.source == "fallback" and reply.stage == "pitch"
        variant = reply.variant
        for step in after:
            if step == "<hangs up>":
                engine.end(reply.session_id, "hangup")
            else:
                reply = engine.turn(reply.session_id, step)
        calls, kept = expected.get(variant, (0, 0))
        expected[variant] = (calls + 1, kept + continued)

    call("said-bye", "bye", continued=False)  # "bye" ends the call right after the fallback
    call("put-down", "<hangs up>", continued=False)
    call("answered-then-left", "hmm", "<hangs up>", continued=True)
    call("converted", "yes please", continued=True)
    call("refused", "no thanks", continued=True)  # stayed on the line and answered
    call("in-progress", continued=False)  # no reply yet
    counts = funnel_sql.collect(engine.store.engine, name)
    got = {v.variant: (v.calls, v.continued) for v in counts.variants}
    assert got == expected and sum(c for c, _ in got.values()) == 6
    assert sum(k for _, k in got.values()) == 3
    assert counts.hangups == {"hybrid": 3}  # "bye", put down twice
    assert counts.active == {"hybrid": 1}


def test_reading_takes_no_write_lock_on_sqlite(tmp_path):
    """A report over a live SQLite database must not stall the turns being written."""
    path = tmp_path / "live.db"
    store = Store(f"sqlite:///{path}")
    with funnel_sql.reading(store.engine) as conn:
        assert funnel_sql.collect(conn, "anything").assigned == {}
        writer = sqlite3.connect(path, timeout=0, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the report held it
        writer.execute("ROLLBACK")
        writer.close()
    with store.engine.connect() as conn:  # the Store's own engine does lock: the contrast
        conn.exec_driver_sql("SELECT 1")
        writer = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError):
            writer.execute("BEGIN IMMEDIATE")
        writer.close()
    store.close()
