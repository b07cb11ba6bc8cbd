"""Simulations through the real Engine (broadband flow, real classifier, tf-idf embedder) with a
fake LLM at the process boundary: reproducible, responsive to its inputs, resumable."""

from __future__ import annotations

import html
import json
import os
import random
import re
import threading
import time
from collections import Counter

import pytest
from click.testing import CliRunner
from scipy import stats as sps
from sqlalchemy import select

from engine.cli import main
from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.flow.classifier import flow_classifier
from engine.flow.loader import load_flow
from engine.llm.base import BackendError, LLMBackend
from engine.llm.prompt import PLAYBOOK_HEADER
from engine.llm.registry import register_backend
from engine.report import build_report
from engine.report.format import interval, pval
from engine.report.stats import PAIRED_TEST, compare, newcombe_paired
from engine.simulation import Simulation, choose, load_population
from engine.simulation.batching import RoundBatcher
from engine.simulation.results import (
    outcome_counts,
    paired_comparisons,
    rate,
    run_conversations,
)
from storage import Store
from storage.models import Conversation, SimulationRun
from tests.conftest import BROADBAND, ROOT
from tests.fakes import FakeBackend, customer_words
from tests.test_stats import hand_holm

N = 25
SEED = 7


class Drafts(FakeBackend):
    """A fake LLM at the process boundary that drafts an approved wording of the stage answering
    the customer's last words (a price answer to a price objection, ...), so the LLM stages can
    do well whatever the compliance thresholds. A pure function of the prompt: results do not
    depend on the order in which concurrent conversations call it."""

    WANTS = (
        (("afford", "expensive", "cheap", "price", "pricey", "cost", "pay", "money", "£", "dear"),
         ("handle_price_objection", "inform")),
        (("contract", "tied", "months", "commit", "lock", "moving", "cancel", "switch"),
         ("handle_contract_objection", "inform")),
        ((), ("pitch", "close", "greet", "verify", "ask_need", "confirm")),
    )  # fmt: skip

    def __init__(self, flow):
        super().__init__()
        self.stages = [
            (stage.goal, [flow.scripts[i] for i in stage.compliance.candidates])
            for stage in flow.stages.values() if stage.compliance is not None and stage.goal
        ]  # fmt: skip

    def generate(self, messages, params, seed=None, session_key=None):
        said = customer_words(messages).lower()
        if PLAYBOOK_HEADER in messages[0]["content"]:  # pure_llm: one step of the playbook a turn
            step = sum(m["role"] == "assistant" for m in messages)
            scripts = self.stages[min(step, len(self.stages) - 1)][1]
        else:
            scripts = next(s for goal, s in self.stages if goal in messages[0]["content"])
        for words, acts in self.WANTS:
            if not words or any(w in said for w in words):
                fitting = [s for s in scripts if s.act in acts] or scripts
                text = fitting[len(said) % len(fitting)].text
                # placeholders read as the filter indexes them: "{customer_name}" -> "customer name"
                self.default = re.sub(r"\{(\w+)\}", lambda m: m[1].replace("_", " "), text)
                break
        return super().generate(messages, params, seed, session_key)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Flow, classifier, compliance filter and personas, built once for the module."""
    cache = os.environ.get("SALESBOT_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SALESBOT_CACHE", cache)
        flow = load_flow(BROADBAND)
        classifier = flow_classifier(flow)
    return {
        "flow": flow,
        "classifier": classifier,
        "compliance": ComplianceFilter(flow, CharNgramEmbedder()),
        "population": load_population(flow),
    }


def simulate(parts, db_url, *, backend=None, seed=SEED, population=None, n=N, stop=None,
             concurrency=4):  # fmt: skip
    engine = Engine(
        flow=parts["flow"],
        classifier=parts["classifier"],
        backend=backend or Drafts(parts["flow"]),
        compliance=parts["compliance"],
        store=Store(db_url),
    )
    experiment, arms = choose(engine.flow, {}, "hybrid,pure_llm", None, seed)
    simulation = Simulation(
        engine, population or parts["population"], experiment, arms, n=n, seed=seed,
        concurrency=concurrency,
    )  # fmt: skip
    result = simulation.run(stop=stop)
    return engine, experiment, result


def stable_report(engine, experiment, run_id) -> dict:
    """The report minus what legitimately differs between identical runs (clock times)."""
    payload = build_report(engine.store, experiment.name, run_id=run_id).to_dict()
    payload.pop("generated_at")
    payload.pop("latency")
    payload.pop("database")  # the dialect: the same results on SQLite and PostgreSQL
    return payload


def transcript(engine, run_id) -> list[tuple]:
    rows = []
    for c in run_conversations(engine.store, run_id):
        turns = [(t.user_text, t.script_id, t.stage) for t in engine.store.turns(c.session_id)]
        rows.append((c.customer_id, c.arm, c.outcome, sorted(c.stages), turns))
    return rows


@pytest.fixture(scope="module")
def baseline(parts, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('baseline') / 'sim.db'}"
    engine, experiment, result = simulate(parts, db)
    return engine, experiment, result


def test_a_run_stores_everything_like_live_traffic(baseline):
    engine, experiment, result = baseline
    assert (result.total, result.done, result.new, result.interrupted) == (
        2 * N,
        2 * N,
        2 * N,
        False,
    )
    with engine.store.transaction() as db:
        run = db.get(SimulationRun, result.run_id)
        assert run.status == "finished" and run.finished_at is not None
        assert run.params["n"] == N and run.params["arms"] == [
            ["hybrid", "hybrid"],
            ["pure_llm", "pure_llm"],
        ]
        rows = db.scalars(select(Conversation).where(Conversation.run_id == result.run_id)).all()
    assert len(rows) == 2 * N and all(c.status == "ended" for c in rows)
    assert {c.experiment for c in rows} == {experiment.name}
    record = rows[0].assignment
    assert record["forced"] is True and record["arm"] in ("hybrid", "pure_llm")
    assert (
        record["simulation"]["persona"] in engine.flow.folder.joinpath("personas.yaml").read_text()
    )
    # paired: every customer is run once in each arm, with the same slots
    by_customer = {}
    for c in rows:
        by_customer.setdefault(c.customer_id, []).append((c.arm, c.slots["customer_name"]))
    assert len(by_customer) == N
    assert all(sorted(a for a, _ in v) == ["hybrid", "pure_llm"] and len({s for _, s in v}) == 1
               for v in by_customer.values())  # fmt: skip
    # the customer spoke the bank's held-out utterances, and the engine classified them
    turns = engine.store.turns(rows[0].id)
    bank = {t for texts in engine_population_texts(rows[0]) for t in texts}
    assert all(t.user_text in bank for t in turns[1:])


def engine_population_texts(_row):
    population = load_population(load_flow(BROADBAND))
    return [*population.bank.intents.values(), population.bank.noise]


def test_the_report_compares_the_arms_with_a_paired_test(baseline):
    engine, experiment, result = baseline
    conversations = run_conversations(engine.store, result.run_id)
    report = build_report(engine.store, experiment.name, run_id=result.run_id)
    assert [a.name for a in report.arms] == ["hybrid", "pure_llm"] and report.control == "hybrid"
    (paired,) = paired_comparisons(conversations, experiment, ["hybrid", "pure_llm"])
    assert paired.test.pairs == N
    assert paired.test.rate_a == pytest.approx(report.arms[0].closed.rate)
    assert paired.test.rate_b == pytest.approx(report.arms[1].closed.rate)
    # the McNemar table counted by hand, customer by customer
    closed = {(c.customer_id, c.arm): c.outcome in experiment.success_outcomes
              for c in conversations}  # fmt: skip
    customers = {c.customer_id for c in conversations}
    table = Counter((closed[(u, "hybrid")], closed[(u, "pure_llm")]) for u in customers)
    only_hybrid, only_pure = table[(True, False)], table[(False, True)]
    t = paired.test
    assert (t.both, t.only_a, t.only_b, t.neither) == (
        table[(True, True)], only_hybrid, only_pure, table[(False, False)]
    )  # fmt: skip
    assert only_hybrid + only_pure > 0  # the arms disagree on some customers: a real test
    # the report's primary comparison is that paired test, not the two-sample one
    (primary,) = report.primary
    assert report.paired and report.test.startswith("McNemar mid-p")
    assert primary.paired == t and primary.diff == pytest.approx((only_pure - only_hybrid) / N)
    k, discordant = min(only_hybrid, only_pure), only_hybrid + only_pure
    mid_p = 2 * (sps.binom.cdf(k, discordant, 0.5) - sps.binom.pmf(k, discordant, 0.5) / 2)
    assert primary.p_value == pytest.approx(min(mid_p, 1.0))
    assert (primary.low, primary.high) == pytest.approx(
        newcombe_paired(table[(True, True)], only_pure, only_hybrid, table[(False, False)])
    )
    unpaired = compare(
        primary.value.count, N, primary.control_value.count, N
    )  # what live traffic would get from the same counts: a different test
    # Both p-values are 1 when the discordant pairs split evenly; the intervals still differ,
    # since the paired one accounts for the correlation of the same customers in both arms.
    assert (primary.low, primary.high) != pytest.approx((unpaired.low, unpaired.high))
    for c in report.secondary:  # every comparison of a paired run is paired
        assert c.paired is not None and c.paired.pairs == N


def test_same_seed_gives_identical_results_and_report(parts, baseline, tmp_path):
    engine, experiment, result = baseline
    again, _, result2 = simulate(parts, f"sqlite:///{tmp_path / 'again.db'}")
    assert result2.run_id == result.run_id  # the run id is a hash of the inputs
    assert transcript(again, result2.run_id) == transcript(engine, result.run_id)
    assert stable_report(again, experiment, result2.run_id) == stable_report(
        engine, experiment, result.run_id
    )


def test_a_different_seed_gives_different_results(parts, baseline, tmp_path):
    engine, experiment, result = baseline
    other, experiment8, result8 = simulate(parts, f"sqlite:///{tmp_path / 'seed8.db'}", seed=8)
    assert result8.run_id != result.run_id

    # Other customers: what they said differs, compared without ids, seeds or clock times.
    def said(eng, run_id) -> list[str]:
        rows = transcript(eng, run_id)
        return sorted(repr((arm, [t[0] for t in turns])) for _, arm, _, _, turns in rows)

    assert said(engine, result.run_id) != said(other, result8.run_id)

    # ... and so do the results: the arms' outcomes and funnel, not only the recorded seed.
    def results(store, run_id) -> dict:
        report = build_report(store, experiment.name, run_id=run_id)
        return {
            "outcomes": {a.name: a.outcomes for a in report.arms},
            "funnel": [(r.stage, {a: c.reached.count for a, c in r.arms.items()})
                       for r in report.funnel],
        }  # fmt: skip

    assert results(other.store, result8.run_id) != results(engine.store, result.run_id)


def test_an_llm_that_always_falls_back_closes_fewer_calls(parts, tmp_path):
    # 80 customers an arm: at 25 the hybrid arm, which closes on its scripted stages too, closed
    # as many with a broken LLM as with a working one (4 of 25 both) once flow.yaml changed.
    engine, _, result = simulate(parts, f"sqlite:///{tmp_path / 'base.db'}", n=80)
    base = run_conversations(engine.store, result.run_id)
    broken, _, result_fb = simulate(
        parts, f"sqlite:///{tmp_path / 'fb.db'}", backend=FakeBackend(""), n=80
    )
    fell_back = run_conversations(broken.store, result_fb.run_id)
    assert rate(base, "hybrid") > 0.1  # something to lose
    for arm in ("hybrid", "pure_llm"):
        assert rate(fell_back, arm) <= rate(base, arm)
    assert rate(fell_back, "hybrid") < rate(base, "hybrid")
    assert rate(fell_back, "hybrid", "hung_up") > rate(base, "hybrid", "hung_up")


def test_less_patient_customers_hang_up_more_and_close_less(parts, baseline, tmp_path):
    engine, _, result = baseline
    base = run_conversations(engine.store, result.run_id)
    impatient = parts["population"].adjusted(set_to={"patience": 0.3})
    other, _, result_p = simulate(parts, f"sqlite:///{tmp_path / 'p.db'}", population=impatient)
    low = run_conversations(other.store, result_p.run_id)
    for arm in ("hybrid", "pure_llm"):
        assert rate(low, arm, "hung_up") > rate(base, arm, "hung_up")
    assert rate(low, "hybrid") < rate(base, "hybrid")


class StopAfter(Drafts):
    """The LLM boundary, used to interrupt a run in the middle of conversations."""

    def __init__(self, flow, stop: threading.Event, calls: int):
        super().__init__(flow)
        self.stop, self.calls = stop, calls

    def generate(self, messages, params, seed=None, session_key=None):
        if len(self.history) + 1 >= self.calls:
            self.stop.set()
        return super().generate(messages, params, seed, session_key)


def test_an_interrupted_run_resumes_to_the_same_results(parts, baseline, db_url):
    engine, experiment, result = baseline
    stop = threading.Event()
    first, _, part = simulate(parts, db_url, backend=StopAfter(parts["flow"], stop, 25), stop=stop)
    assert part.interrupted and 0 < part.done < part.total
    with first.store.transaction() as db:
        statuses = db.scalars(
            select(Conversation.status).where(Conversation.run_id == part.run_id)
        ).all()
        assert db.get(SimulationRun, part.run_id).status == "interrupted"
    assert "active" in statuses  # stopped mid-call: the resume must replay these
    resumed_engine, _, resumed = simulate(parts, db_url)
    assert resumed.run_id == part.run_id == result.run_id
    assert resumed.resumed == part.done and resumed.continued == statuses.count("active")
    assert resumed.done == resumed.total and not resumed.interrupted
    assert transcript(resumed_engine, resumed.run_id) == transcript(engine, result.run_id)
    assert stable_report(resumed_engine, experiment, resumed.run_id) == stable_report(
        engine, experiment, result.run_id
    )
    # running a finished run again is a no-op that reports the same
    _, _, again = simulate(parts, db_url)
    assert (again.new, again.resumed) == (0, again.total)


class JitteryBatches(Drafts):
    """Drafts in batches, each taking a random time, recording which sessions shared one."""

    can_batch = True

    def __init__(self, flow, seed: int):
        super().__init__(flow)
        self.random = random.Random(seed)
        self.batches: list[tuple[str, ...]] = []

    def generate_batch(self, items):
        self.batches.append(tuple(item.session_key for item in items))
        time.sleep(self.random.uniform(0, 0.02))
        return [self.generate(list(i.messages), i.params, i.seed, i.session_key) for i in items]


def test_batches_are_formed_by_the_conversations_not_by_thread_timing(parts, tmp_path):
    """Which drafts share a forward pass decides their logits' last bits: the same run must
    form the same batches however the threads are scheduled."""
    runs = []
    for jitter in (1, 2):
        llm = JitteryBatches(parts["flow"], seed=jitter)
        db = f"sqlite:///{tmp_path / f'jitter{jitter}.db'}"
        engine, _, result = simulate(parts, db, backend=RoundBatcher(llm, max_batch=3), n=8,
                                     concurrency=5)  # fmt: skip
        runs.append((llm.batches, transcript(engine, result.run_id)))
    (batches, first), (batches2, second) = runs
    assert batches == batches2 and first == second
    assert max(len(b) for b in batches) == 3 and len(batches) > 10
    assert all(list(b) == sorted(b) for b in batches)  # session order within a round


def test_outcomes_cover_the_flow(baseline):
    engine, _, result = baseline
    counts = outcome_counts(run_conversations(engine.store, result.run_id))
    assert set(counts) == {"hybrid", "pure_llm"}
    assert counts["hybrid"]["converted"] > 0 and "active" not in counts["hybrid"]


# -- the command line ---------------------------------------------------------------------


def test_simulate_command_writes_the_report_and_resumes(tmp_path):
    runner = CliRunner()
    db, out = f"sqlite:///{tmp_path / 'cli.db'}", tmp_path / "report"
    args = ["simulate", str(BROADBAND), "--n", "6", "--seed", "3", "--db", db, "--out", str(out),
            "--backend", "script-sampler", "--embedder", "tfidf-char"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().splitlines()[-1].startswith(f"report: {out / 'report.html'}")
    assert "McNemar" in result.output and "pure_llm" in result.output
    for name in ("report.html", "report.md", "report.json", "simulation.md", "simulation.json"):
        assert (out / name).is_file()
    saved = json.loads((out / "simulation.json").read_text())
    assert saved["params"]["n"] == 6 and saved["paired"][0]["test"]["pairs"] == 6
    again = runner.invoke(main, args)
    assert (
        again.exit_code == 0 and "resumed: 12 conversations were already finished" in again.output
    )


def test_simulate_runs_arms_of_a_declared_experiment(tmp_path):
    db = f"sqlite:///{tmp_path / 'exp.db'}"
    args = ["simulate", str(BROADBAND), "--experiment", "compliance_threshold", "--n", "3",
            "--db", db, "--out", str(tmp_path / "r"), "--backend", "script-sampler",
            "--embedder", "tfidf-char"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "experiment compliance_threshold (experiments.yaml)" in result.output
    with Store(db).transaction() as session:
        rows = session.scalars(select(Conversation)).all()
    strict = [c for c in rows if c.arm == "strict_threshold"]
    assert len(rows) == 6 and len(strict) == 3
    stages = strict[0].assignment["overrides"]["stages"]
    assert stages["pitch"]["compliance"]["threshold"] == 0.65  # the arm's override was applied
    assert {c.experiment for c in rows} == {"compliance_threshold"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arms", "hybrid,robot"], "unknown mode 'robot'"),
        (["--arms", "a=hybrid,a=pure_llm"], "arm names must be distinct"),
        (["--experiment", "nope"], "unknown experiment 'nope'"),
        (["--experiment", "hybrid_vs_pure_llm", "--arms", "pure_llm"], "control arm 'hybrid'"),
    ],
)
def test_bad_arguments_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(
        main, ["simulate", str(BROADBAND), "--db", f"sqlite:///{tmp_path / 'x.db'}", *args]
    )
    assert result.exit_code == 2 and message in result.output


def test_an_unreachable_database_exits_2_with_the_reason():
    args = ["simulate", str(BROADBAND), "--n", "1", "--backend", "script-sampler",
            "--embedder", "tfidf-char", "--db", "postgresql://nobody@127.0.0.1:9/none"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--db: cannot open the database" in result.output and "refused" in result.output
    assert "Traceback" not in result.output


def test_a_flow_without_personas_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["simulate", str(ROOT / "tests" / "flows" / "mini")])
    assert result.exit_code == 2
    assert "personas.yaml: file is missing" in result.output
    assert "Traceback" not in result.output


def test_the_simulate_command_sizes_the_kv_cache_for_the_conversations_in_flight():
    """An LRU cache visited in turn by more sessions than it holds never reuses anything."""
    from engine.simulation.backends import CACHE_MB_PER_CONVERSATION
    from engine.simulation.backends import build_backend as _build_backend

    flow = load_flow(BROADBAND)
    llm = _build_backend(None, flow, 32, 64)  # builds, does not load the model
    assert isinstance(llm, RoundBatcher) and llm.max_batch == 32
    assert llm.inner.cache_mb == CACHE_MB_PER_CONVERSATION * 64
    assert _build_backend(None, flow, 1, 4).inner.cache_mb == 512


def test_every_output_of_a_simulation_gives_the_same_paired_verdict(tmp_path):
    """report.html, report.md, report.json, simulation.md, simulation.json and the terminal:
    one p-value and one interval for the primary metric, from McNemar's paired test."""
    out = tmp_path / "report"
    args = ["simulate", str(BROADBAND), "--n", "12", "--seed", "5", "--db",
            f"sqlite:///{tmp_path / 'one.db'}", "--out", str(out), "--backend", "script-sampler",
            "--embedder", "tfidf-char"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["paired"] is True and report["test"] == PAIRED_TEST
    (primary,) = report["primary"]
    table = primary["paired"]
    assert table["pairs"] == 12 and table["p_value"] == primary["p_value"]
    assert (table["low"], table["high"]) == (primary["low"], primary["high"])
    p_text, ci = pval(primary["p_value"]), interval(primary["low"], primary["high"], points=True)
    saved = json.loads((out / "simulation.json").read_text())["paired"][0]
    assert (saved["p_value"], saved["low"], saved["high"]) == (
        primary["p_value"], primary["low"], primary["high"]
    )  # fmt: skip
    assert saved["test"]["p_value"] == primary["p_value"]

    def words(text: str) -> str:
        return " ".join(html.unescape(text).split())  # rich wraps lines; HTML escapes "<"

    for name in ("report.html", "report.md", "simulation.md"):
        text = words((out / name).read_text(encoding="utf-8"))
        assert f"McNemar mid-p p = {p_text}" in text, name
        assert ci in text, name
        assert "z-test" not in text, name  # the two-sample test appears nowhere
    terminal = words(result.output)
    assert f"McNemar mid-p p = {p_text}" in terminal and ci in terminal


class AlwaysFails(LLMBackend):
    """An LLM backend whose every call fails, as a dead server or a broken model would."""

    name = "always-fails"
    can_batch = True

    def _generate(self, request):
        raise BackendError("connection refused by the test backend")

    def generate_batch(self, items):
        raise BackendError("connection refused by the test backend")


def test_a_backend_that_always_fails_makes_the_simulation_fail(tmp_path):
    register_backend("always-fails", lambda **_: AlwaysFails())
    args = ["simulate", str(BROADBAND), "--n", "4", "--backend", "always-fails",
            "--embedder", "tfidf-char"]  # fmt: skip
    first = CliRunner().invoke(
        main, [*args, "--db", f"sqlite:///{tmp_path / 'a.db'}", "--out", str(tmp_path / "a")]
    )
    assert first.exit_code == 1, first.output
    assert "error: LLM backend errors:" in first.output
    assert "--allow-backend-errors" in first.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    check = next(h for h in report["health"] if h["name"] == "LLM backend")
    assert check["status"] == "alarm" and check["detail"]["errors"] == check["detail"]["llm_turns"]
    assert report["summary"][0].startswith("Do not act on these results")
    assert "LLM backend errors" in (tmp_path / "a" / "simulation.md").read_text()
    allowed = CliRunner().invoke(
        main,
        [*args, "--db", f"sqlite:///{tmp_path / 'b.db'}", "--out", str(tmp_path / "b"),
         "--allow-backend-errors"],
    )  # fmt: skip
    assert allowed.exit_code == 0, allowed.output
    assert "error: LLM backend errors:" in allowed.output


def test_several_treatment_arms_get_holm_on_the_primary_comparisons(tmp_path):
    out = tmp_path / "three"
    args = ["simulate", str(BROADBAND), "--arms", "hybrid,pure_llm,twin=hybrid", "--n", "12",
            "--seed", "5", "--db", f"sqlite:///{tmp_path / 'three.db'}", "--out", str(out),
            "--backend", "script-sampler", "--embedder", "tfidf-char"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    primary = report["primary"]
    assert [c["arm"] for c in primary] == ["pure_llm", "twin"]
    raw = [c["p_value"] for c in primary]
    assert [c["p_adjusted"] for c in primary] == pytest.approx(hand_holm(raw))
    assert [c["significant"] for c in primary] == [p < 0.05 for p in hand_holm(raw)]
    md = (out / "report.md").read_text()
    assert "Holm-adjusted across the 2 treatment arms" in md
    assert all(f"Holm-adjusted p = {pval(c['p_adjusted'])}" in md for c in primary)
