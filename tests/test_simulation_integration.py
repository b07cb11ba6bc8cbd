"""The main job with the real default parts: SmolLM2 (transformers), MiniLM, SQLite, batching."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from engine.engine import Engine, flow_backend_options
from engine.flow.loader import load_flow
from engine.llm import create_backend
from engine.report import build_report
from engine.simulation import Simulation, choose, load_population
from engine.simulation.batching import simulation_backend
from storage.models import ComplianceDecision, Conversation
from tests.conftest import BROADBAND

pytestmark = pytest.mark.integration


def test_simulated_customers_meet_the_real_models_in_both_arms(tmp_path):
    flow = load_flow(BROADBAND)
    served = create_backend("transformers", **flow_backend_options(flow, "transformers"))
    backend = simulation_backend(served, max_batch=8)
    engine = Engine.from_flow_dir(BROADBAND, f"sqlite:///{tmp_path / 'sim.db'}", backend=backend)
    population = load_population(engine.flow).adjusted(
        set_to={"busy": 0.0, "wrong_person": 0.0, "bot_aversion": 0.0, "patience": 1.0},
    )
    experiment, arms = choose(engine.flow, engine.experiments, "hybrid,pure_llm", None, 7)
    short = {"generation": {"max_new_tokens": 16}}  # arm overrides keep the test quick
    experiment = dataclasses.replace(
        experiment, arms=tuple(dataclasses.replace(a, overrides=short) for a in experiment.arms)
    )
    simulation = Simulation(engine, population, experiment, arms, n=2, seed=7, concurrency=8)
    result = simulation.run()
    assert (result.done, result.total, result.interrupted) == (4, 4, False)
    assert served.adapter_hash == flow.adapter_hash  # the flow's tuned adapter, as shipped

    with engine.store.transaction() as db:
        statuses = db.scalars(
            select(Conversation.status).where(Conversation.run_id == result.run_id)
        ).all()
        audits = db.scalars(
            select(ComplianceDecision)
            .join(Conversation, Conversation.id == ComplianceDecision.conversation_id)
            .where(Conversation.run_id == result.run_id)
        ).all()
    assert statuses == ["ended"] * 4
    # pure_llm answers every stage with the model: real drafts, judged by the real filter
    assert len(audits) >= 2
    assert all(a.error is None for a in audits), [a.error for a in audits]
    assert any(a.raw_text and a.raw_text.strip() for a in audits)
    assert {a.embedder for a in audits} == {"minilm"}
    assert {a.adapter_hash for a in audits} == {flow.adapter_hash}  # every audit row names it
    # broadband_en decodes within the scripts (compliance.decoding: constrained), in both arms:
    # every draft is a script word for word, matched as itself
    assert all(a.decision == "approved" and a.score == 1.0 for a in audits)
    assert all(a.top_k["ids"] == [a.script_id] for a in audits)
    stats = backend.stats
    assert stats.requests == len(audits) and stats.mean_size > 1  # calls shared forward passes
    report = build_report(engine.store, experiment.name, run_id=result.run_id)
    assert [a.assigned for a in report.arms] == [2, 2]
