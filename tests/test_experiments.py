"""experiments.yaml validation, deterministic assignment, and arms in the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sps

from engine.errors import FlowValidationError, SalesbotError
from engine.experiments import (
    BUCKETS,
    apply_overrides,
    arm_for_bucket,
    bucket_of,
    fnv1a32,
    gb_hash,
    load_experiments,
)
from engine.flow.loader import load_flow
from tests.conftest import BROADBAND, INSURANCE, ROOT
from tests.fakes import FakeBackend
from tests.test_engine import MINI, make_engine

MINI_EXPERIMENTS = """\
experiments:
  mini_ab:
    description: Hybrid against pure LLM on the mini flow.
    seed: mini-seed
    control: hybrid
    funnel: [greeting, pitch, converted]
    arms:
      hybrid: {mode: hybrid, weight: 0.5}
      llm_strict:
        mode: pure_llm
        weight: 0.5
        overrides:
          generation: {temperature: 0.3}
          stages:
            pitch: {compliance: {threshold: 0.99}}
    fallback_wording:
      pitch: {pitch.fallback_a: 0.5, pitch.fallback_b: 0.5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- assignment -----------------------------------------------------------------------------

# GrowthBook's SDK test cases (packages/sdk-js/test/cases.json, "hash", version 2):
# [seed, value, expected hash]. Matching them means any GrowthBook SDK reproduces our buckets.
GROWTHBOOK_V2 = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
]


@pytest.mark.parametrize("seed,value,expected", GROWTHBOOK_V2)
def test_hash_matches_growthbook_v2(seed, value, expected):
    assert gb_hash(seed, value) == pytest.approx(expected, abs=1e-12)


def test_fnv1a_reference_values():
    # Landon Curt Noll's FNV-1a 32-bit test vectors.
    assert [fnv1a32(s) for s in ("", "a", "foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968]


def test_bucket_ranges_follow_weights():
    weights = [("a", 0.2), ("b", 0.3), ("c", 0.5)]
    assert [arm_for_bucket(b, weights) for b in (0, 1999, 2000, 4999, 5000, BUCKETS - 1)] == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
    ]
    thirds = [("x", 1 / 3), ("y", 1 / 3), ("z", 1 / 3)]  # float sums never leave a gap
    assert {arm_for_bucket(b, thirds) for b in range(BUCKETS)} == {"x", "y", "z"}
    with pytest.raises(ValueError):
        arm_for_bucket(BUCKETS, weights)


def test_split_is_even_within_sampling_error_over_100k_ids():
    weights = [("hybrid", 0.5), ("pure_llm", 0.5)]
    counts = {"hybrid": 0, "pure_llm": 0}
    for i in range(100_000):
        counts[arm_for_bucket(bucket_of("bb-2025", f"customer-{i}"), weights)] += 1
    observed = [counts["hybrid"], counts["pure_llm"]]
    assert sps.chisquare(observed, [50_000, 50_000]).pvalue > 0.001
    assert abs(counts["hybrid"] - 50_000) < 1_000  # ~6 standard deviations


def test_uneven_split_and_buckets_are_uniform():
    buckets = [bucket_of("other-seed", f"u{i}") for i in range(50_000)]
    deciles = [0] * 10
    for b in buckets:
        deciles[b * 10 // BUCKETS] += 1
    assert sps.chisquare(deciles).pvalue > 0.001
    weights = [("control", 0.2), ("treatment", 0.8)]
    control = sum(arm_for_bucket(b, weights) == "control" for b in buckets)
    assert sps.binomtest(control, len(buckets), 0.2).pvalue > 0.001


def test_assignment_is_stable_across_processes():
    """Python's str hash is salted per process; the assignment must not depend on it."""
    ids = [f"cust-{i}" for i in range(300)] + ["客户-7", "émile"]
    here = [bucket_of("stable-seed", i) for i in ids]
    code = (
        "import json, sys; from engine.experiments import bucket_of; "
        "print(json.dumps([bucket_of('stable-seed', i) for i in json.load(sys.stdin)]))"
    )
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(ids),
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=env,
        )
        assert json.loads(out.stdout) == here


def test_experiment_assigns_and_records_once(tmp_path):
    flow = load_flow(MINI)
    experiment = load_experiments(write(tmp_path, MINI_EXPERIMENTS), flow)["mini_ab"]
    first = experiment.assign("cust-42")
    assert first == experiment.assign("cust-42")
    assert first.bucket == bucket_of("mini-seed", "cust-42")
    assert first.arm == arm_for_bucket(first.bucket, experiment.weights)
    record = first.record()
    assert record["scheme"] == "assign:v2" and record["hash_version"] == 2
    assert record["seed"] == "mini-seed" and record["bucket"] == first.bucket
    assert record["design"]["weights"] == {"hybrid": 0.5, "llm_strict": 0.5}
    assert record["design"]["funnel"] == ["greeting", "pitch", "converted"]
    assert record["design"]["definition"].startswith("experiment:v1:")
    forced = experiment.assign("cust-42", arm="llm_strict")
    assert forced.forced and forced.arm == "llm_strict" and forced.bucket == first.bucket
    with pytest.raises(KeyError):
        experiment.assign("cust-42", arm="nope")


# -- experiments.yaml -----------------------------------------------------------------------


def test_shipped_experiments_load_against_their_flows():
    for folder in (BROADBAND, INSURANCE):
        flow = load_flow(folder)
        experiments = load_experiments(folder, flow)
        main = experiments["hybrid_vs_pure_llm"]
        assert {a.mode for a in main.arms} == {"hybrid", "pure_llm"}
        assert main.funnel[0] == flow.start and main.hangup_outcomes == ("hung_up",)
        for arm in main.arms:
            apply_overrides(flow, arm.overrides)  # every arm's flow can be derived


def test_a_folder_without_experiments_has_none(tmp_path):
    assert load_experiments(tmp_path) == {}
    with pytest.raises(FlowValidationError):
        load_experiments(tmp_path, required=True)


def problems_of(tmp_path: Path, text: str, flow=None) -> list[tuple[int | None, str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(FlowValidationError) as info:
        load_experiments(path, flow)
    assert all(p.file == str(path) for p in info.value.problems)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_schema_errors_name_line_and_field(tmp_path):
    text = MINI_EXPERIMENTS.replace("mode: pure_llm", "mode: robot").replace(
        "control: hybrid", "control: hybrid\n    colour: blue"
    )
    problems = problems_of(tmp_path, text)
    fields = {field: line for line, field, _ in problems}
    assert fields["experiments.mini_ab.arms.llm_strict.mode"] == 11
    assert fields["experiments.mini_ab.colour"] == 6
    assert any("hybrid" in m and "pure_llm" in m for _, _, m in problems)


def test_cross_checks_against_the_flow(tmp_path):
    flow = load_flow(MINI)
    text = (
        MINI_EXPERIMENTS.replace("weight: 0.5}", "weight: 0.6}")
        .replace("control: hybrid", "control: nobody")
        .replace("[greeting, pitch, converted]", "[greeting, nowhere]")
        .replace("pitch.fallback_b: 0.5}", "greeting.open: 0.5}")
        .replace("pitch: {compliance: {threshold: 0.99}}", "converted: {generation: {top_p: 0.5}}")
        .replace("primary_metric", "x")
    )
    text = text.replace("    control: nobody", "    control: nobody\n    success_outcomes: [won]")
    problems = problems_of(tmp_path, text, flow)
    by_field = {field: (line, message) for line, field, message in problems}
    assert by_field["experiments.mini_ab.arms"][1] == "arm weights sum to 1.1, not 1"
    assert "not one of the arms" in by_field["experiments.mini_ab.control"][1]
    assert by_field["experiments.mini_ab.control"][0] == 5
    assert "unknown stage 'nowhere'" in by_field["experiments.mini_ab.funnel.1"][1]
    assert "unknown outcome 'won'" in by_field["experiments.mini_ab.success_outcomes.0"][1]
    pool = "experiments.mini_ab.fallback_wording.pitch.greeting.open"
    assert "not listed for 'pitch'" in by_field[pool][1] and by_field[pool][0] == 18
    stage = "experiments.mini_ab.arms.llm_strict.overrides.stages.converted"
    assert "end stage" in by_field[stage][1]


def test_generation_overrides_are_checked_when_combined(tmp_path):
    flow = load_flow(MINI)
    text = MINI_EXPERIMENTS.replace("{temperature: 0.3}", "{temperature: 0, do_sample: true}")
    problems = problems_of(tmp_path, text, flow)
    assert len(problems) == 1
    line, field, message = problems[0]
    assert field == "experiments.mini_ab.arms.llm_strict.overrides" and line == 12
    assert "temperature must be > 0" in message


def test_yaml_problems_are_located(tmp_path):
    duplicate = MINI_EXPERIMENTS.replace("    seed: mini-seed\n", "    seed: a\n    seed: b\n")
    problems = problems_of(tmp_path, duplicate)
    assert problems[0][:2] == (5, "experiments.mini_ab.seed")  # the second `seed:`
    broken = problems_of(tmp_path, "experiments:\n  x: [unclosed\n")
    assert broken[0][0] is not None and "YAML syntax error" in broken[0][2]


# -- arms in the engine ---------------------------------------------------------------------


def experiment_engine(db_url: str, tmp_path: Path, backend: FakeBackend | None = None):
    engine = make_engine(db_url, backend)
    engine.experiments = load_experiments(write(tmp_path, MINI_EXPERIMENTS), engine.flow)
    return engine


def customer_in(engine, arm: str) -> str:
    experiment = engine.experiments["mini_ab"]
    return next(f"c{i}" for i in range(1000) if experiment.assign(f"c{i}").arm == arm)


def test_start_assigns_and_stores_the_record(db_url, tmp_path):
    backend = FakeBackend(default="Hello, this is Sam. Am I speaking with Alex?")
    engine = experiment_engine(db_url, tmp_path, backend)
    customer = customer_in(engine, "llm_strict")
    reply = engine.start(customer, {"customer_name": "Alex"}, experiment="mini_ab")
    stored = engine.store.get(reply.session_id)
    assert (stored.arm, stored.experiment) == ("llm_strict", "mini_ab")
    record = stored.assignment
    assert record["mode"] == "pure_llm" and record["bucket"] == bucket_of("mini-seed", customer)
    assert record["seed"] == "mini-seed" and record["hash_version"] == 2 and not record["forced"]
    # pure_llm mode: even the scripted greeting was drafted by the LLM (and approved).
    assert len(backend.history) == 1 and reply.source == "llm"
    # The arm's generation override reached the backend.
    assert backend.history[0][1].temperature == 0.3
    again = engine.start(customer, {"customer_name": "Alex"}, experiment="mini_ab")
    assert engine.store.get(again.session_id).assignment["bucket"] == record["bucket"]


def test_turns_use_the_arm_mode_and_overrides_after_a_restart(db_url, tmp_path):
    backend = FakeBackend(default="Would you like me to upgrade you to the faster plan?")
    engine = experiment_engine(db_url, tmp_path, backend)
    hybrid = engine.start(
        customer_in(engine, "hybrid"), {"customer_name": "A"}, experiment="mini_ab"
    )
    strict = engine.start(
        customer_in(engine, "llm_strict"), {"customer_name": "B"}, experiment="mini_ab"
    )
    # A fresh engine (another replica) without experiments.yaml serves the same sessions.
    replica = make_engine(db_url, backend)
    unmatched = "hmm"  # out of scope: the stage's otherwise
    assert replica.turn(hybrid.session_id, unmatched).source == "script"  # hybrid re-prompt
    assert replica.turn(strict.session_id, unmatched).source in {"llm", "universal"}
    hybrid_pitch = replica.turn(hybrid.session_id, "yes that's me")
    strict_pitch = replica.turn(strict.session_id, "yes that's me")
    assert hybrid_pitch.stage == "pitch"
    assert hybrid_pitch.source == "llm"  # a close paraphrase passes the flow's 0.5
    # pure_llm has no stages (the pitch override does not apply): its LLM pitched from the
    # opening line, so the customer's yes at the pitch is the ruler's `accepted`: converted
    assert strict_pitch.stage == "converted" and strict_pitch.source == "script"
    assert strict_pitch.ended
    playbook = [p for m, p in backend.history if "The call, step by step" in m[0]["content"]]
    assert len(playbook) == 2 and {p.temperature for p in playbook} == {0.3}  # the yes: no draft


def test_plain_modes_forced_arms_and_errors(db_url, tmp_path):
    engine = experiment_engine(db_url, tmp_path, FakeBackend(default="zz"))
    plain = engine.start("p1", {"customer_name": "A"}, arm="pure_llm")
    stored = engine.store.get(plain.session_id)
    assert (stored.arm, stored.experiment, stored.assignment) == ("pure_llm", None, {})
    forced = engine.start("p1", {"customer_name": "A"}, experiment="mini_ab", arm="hybrid")
    record = engine.store.get(forced.session_id).assignment
    assert record["forced"] and record["arm"] == "hybrid"
    with pytest.raises(SalesbotError, match="unknown experiment"):
        engine.start("p1", {"customer_name": "A"}, experiment="missing")
    with pytest.raises(SalesbotError, match="unknown arm mode"):
        engine.start("p1", {"customer_name": "A"}, arm="robot")
    with pytest.raises(SalesbotError, match="no arm"):
        engine.start("p1", {"customer_name": "A"}, experiment="mini_ab", arm="robot")
    precomputed = engine.experiments["mini_ab"].assign("p9", arm="llm_strict")
    reply = engine.start("p9", {"customer_name": "A"}, assignment=precomputed, run_id=None)
    assert engine.store.get(reply.session_id).arm == "llm_strict"
    with pytest.raises(SalesbotError, match="contradicts"):
        engine.start("p9", {"customer_name": "A"}, assignment=precomputed, arm="hybrid")


def test_overrides_leave_the_base_flow_alone():
    flow = load_flow(MINI)
    derived = apply_overrides(
        flow,
        {
            "compliance": {"threshold": 0.7},
            "generation": {"max_new_tokens": 10},
            "stages": {"pitch": {"compliance": {"fallback": {"pitch.fallback_a": 1.0}}}},
        },
    )
    pitch, base = derived.stages["pitch"], flow.stages["pitch"]
    assert pitch.compliance.threshold == 0.7 and base.compliance.threshold == 0.5
    assert pitch.compliance.fallback == (("pitch.fallback_a", 1.0),)
    assert pitch.generation.max_new_tokens == 10 and base.generation.max_new_tokens == 24
    assert pitch.generation.top_p == base.generation.top_p  # untouched fields are kept
    assert derived.stages["greeting"].compliance.threshold == 0.7
    assert derived.scripts is flow.scripts and derived.version == flow.version
    assert apply_overrides(flow, {}) is flow
    with pytest.raises(SalesbotError):
        apply_overrides(flow, {"stages": {"converted": {"generation": {"top_p": 0.5}}}})
