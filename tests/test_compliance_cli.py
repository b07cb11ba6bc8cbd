"""`salesbot compliance calibrate|eval` on the mini flow (model-free tfidf-char embedder)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.compliance import ComplianceFilter
from engine.compliance.calibration import Pair, Scored, auroc, load_pairs, session_slots
from engine.compliance.embedders import CharNgramEmbedder
from engine.flow.loader import load_flow
from tests.conftest import ROOT
from tests.test_engine import MINI

PAIRS = ROOT / "tests" / "data" / "compliance" / "mini_pairs.csv"


def run(*args: str):
    return CliRunner().invoke(main, ["compliance", *args])


def test_eval_matches_the_filter_decision_pair_by_pair():
    result = run("eval", str(MINI), "--pairs", str(PAIRS), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    flow = load_flow(MINI)
    flt = ComplianceFilter(flow, CharNgramEmbedder())
    slots = session_slots(flow)
    pairs = load_pairs(PAIRS, flow)
    decided = [
        flt.check(p.text, p.stage, flow.stages[p.stage].compliance, "eval", slots) for p in pairs
    ]
    correct = [
        (d.decision == "approved" and d.script_id in p.acceptable)
        if p.acceptable
        else d.decision != "approved"
        for p, d in zip(pairs, decided, strict=True)
    ]
    nones = [d for p, d in zip(pairs, decided, strict=True) if not p.acceptable]
    overall = report["overall"]
    assert (overall["n"], overall["none"]) == (13, 6)
    assert overall["accuracy"] == pytest.approx(sum(correct) / len(pairs))
    assert overall["false_accept"] == pytest.approx(
        sum(d.decision == "approved" for d in nones) / len(nones)
    )
    assert set(report["categories"]) == {
        "discount", "injection", "near_miss", "off_topic", "paraphrase"
    }  # fmt: skip
    assert report["stages"]["greeting"]["n"] == 1


def scored(score: float, good: bool, rule_hit: bool = False) -> Scored:
    pair = Pair(1, "pitch", "draft", frozenset({"a"} if good else set()), "x")
    return Scored(pair, "a", score, None, rule_hit)


def test_auroc_ranks_acceptable_nearest_scripts_above_the_rest():
    good = [scored(s, True) for s in (0.9, 0.8, 0.7)]
    bad = [scored(s, False) for s in (0.6, 0.5)]
    assert auroc(good + bad) == pytest.approx(1.0)
    # One bad draft above every good one: 3 of the 6 (good, bad) pairs are now misordered.
    assert auroc(good + [scored(0.95, False), bad[1]]) == pytest.approx(3 / 6)
    # A rule hit ranks below everything, whatever its similarity.
    assert auroc(good + [scored(0.99, False, rule_hit=True), bad[1]]) == pytest.approx(1.0)
    assert auroc(good) is None  # one class only


def test_calibrate_writes_table_plot_and_the_lowest_threshold_within_budget(tmp_path):
    out = tmp_path / "cal"
    result = run(
        "calibrate", str(MINI), "--pairs", str(PAIRS), "--out", str(out),
        "--max-false-accept", "0.0", "--margins", "0,0.05",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    png = out / "mini-tfidf-char.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "mini-tfidf-char.json").read_text())
    pitch = next(s for s in report["stages"] if s["stage"] == "pitch")
    within = [r["threshold"] for r in pitch["rows"] if r["false_accept"] <= 0.0]
    assert pitch["proposed"] == min(within)
    assert [m["margin"] for m in pitch["by_margin"]] == [0.0, 0.05]
    chosen = next(m for m in pitch["by_margin"] if m["margin"] == pitch["margin"])
    other = next(m for m in pitch["by_margin"] if m["margin"] != pitch["margin"])
    assert other["metrics"] is None or (
        chosen["metrics"]["fallback"] <= other["metrics"]["fallback"]
    )
    assert f"pitch: {{threshold: {pitch['proposed']:.2f}, margin: {pitch['margin']:g}}}" in (
        result.output
    )
    assert "fallback" in result.output and "false accept" in result.output


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ('pitch,pitch.nope,x,"hello"', "label", "not a candidate script of stage 'pitch'"),
        ('pitch,pitch.fallback_a,x,"hello"', "label", "not a candidate script"),
        ('closing,none,x,"hello"', "stage", "is not a stage with a compliance policy"),
        ('pitch,none,x,""', "text", "empty draft"),
    ],
)
def test_bad_pairs_rows_exit_2_with_file_line_and_field(tmp_path, row, field, message):
    bad = tmp_path / "pairs.csv"
    bad.write_text(PAIRS.read_text() + row + "\n")
    result = run("eval", str(MINI), "--pairs", str(bad))
    assert result.exit_code == 2, result.output
    assert f"{bad}:15: {field}: " in result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_columns_and_bad_margins_are_usage_errors(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("stage,text\npitch,hello\n")
    result = run("eval", str(MINI), "--pairs", str(bad))
    assert result.exit_code == 2 and "missing column(s) label, category" in result.output
    result = run("calibrate", str(MINI), "--pairs", str(PAIRS), "--margins", "0,x")
    assert result.exit_code == 2 and "expected numbers joined by commas" in result.output
    result = run("eval", str(MINI), "--pairs", str(PAIRS), "--embedder", "nope")
    assert result.exit_code == 2 and "unknown embedder 'nope'" in result.output
