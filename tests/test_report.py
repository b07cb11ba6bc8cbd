"""The A/B report: numbers equal hand counts and independent statistics, on SQLite and
PostgreSQL; the HTML renders in a real browser; the CLI maps problems to exit code 2."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize

from engine.cli import main
from engine.experiments import load_experiments
from engine.report import ReportError, build_report, render_html, render_markdown, write_report
from engine.report.format import pval
from engine.report.stats import TWO_SAMPLE_INTERVAL, TWO_SAMPLE_TEST
from storage import Store
from storage.models import Conversation
from tests import test_funnel
from tests.fakes import FakeBackend
from tests.test_engine import make_engine
from tests.test_funnel import GOOD, hand_counts
from tests.test_stats import hand_holm, scipy_wilson

seeded = test_funnel.seeded  # the session fixture: one seeded experiment per back end

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_report_numbers_equal_hand_counts(seeded):
    report = build_report(seeded.store, seeded.experiment)
    hand = hand_counts(seeded.store, seeded.experiment)
    assert report.control == "hybrid" and report.treatments == ["llm_strict"]
    for arm in report.arms:
        n = hand.assigned[arm.name]
        assert (arm.assigned, arm.active) == (n, hand.active[arm.name])
        assert (arm.closed.count, arm.closed.n) == (hand.successes[arm.name], n)
        assert arm.hung_up.count == hand.hangups[arm.name]
        assert arm.outcomes == hand.outcomes[arm.name]
        assert arm.mode == {"hybrid": "hybrid", "llm_strict": "pure_llm"}[arm.name]
    assert [row.stage for row in report.funnel] == ["greeting", "pitch", "converted"]
    for i, row in enumerate(report.funnel):
        for arm in report.arms:
            cell = row.arms[arm.name]
            reached = hand.reached[arm.name].get(row.stage, 0)
            assert (cell.reached.count, cell.reached.n) == (reached, arm.assigned)
            if i:
                previous = hand.reached[arm.name][report.funnel[i - 1].stage]
                assert cell.pass_through == pytest.approx(reached / previous)
    assert report.funnel[0].arms["hybrid"].reached.rate == 1.0
    for row in report.compliance:
        decisions = hand.compliance[row.arm][row.stage]
        assert row.turns == sum(decisions.values())
        assert (row.fallback.count, row.universal.count, row.approved) == (
            decisions.get("fallback", 0),
            decisions.get("universal", 0),
            decisions.get("approved", 0),
        )
    assert {(r.arm, r.stage) for r in report.compliance} == {
        (arm, stage) for arm, stages in hand.compliance.items() for stage in stages
    }
    for v in report.variants:
        assert (v.continued.n, v.continued.count) == hand.variants[v.arm][(v.stage, v.variant)]
    for row in report.latency:
        values = hand.latencies[row.arm][row.source]
        assert row.n == len(values)
        assert [row.p50, row.p95, row.p99] == pytest.approx(np.percentile(values, [50, 95, 99]))


def test_report_statistics_match_independent_computations(seeded):
    report = build_report(seeded.store, seeded.experiment)
    hand = hand_counts(seeded.store, seeded.experiment)
    n0, n1 = hand.assigned["hybrid"], hand.assigned["llm_strict"]

    def check(comparison, c1: int, c0: int) -> None:
        low, high = confint_proportions_2indep(c1, n1, c0, n0, method="newcomb", compare="diff")
        assert comparison.diff == pytest.approx(c1 / n1 - c0 / n0)
        assert (comparison.low, comparison.high) == pytest.approx((low, high))
        table = [[c1, n1 - c1], [c0, n0 - c0]]
        assert comparison.p_value == pytest.approx(sps.chi2_contingency(table, False)[1])
        assert (comparison.value.low, comparison.value.high) == pytest.approx(scipy_wilson(c1, n1))

    (primary,) = report.primary
    assert primary.metric == "close_rate" and primary.p_adjusted is None
    check(primary, hand.successes["llm_strict"], hand.successes["hybrid"])
    assert primary.significant == (primary.p_value < 0.05)
    baseline = hand.successes["hybrid"] / n0
    power = NormalIndPower().power(
        proportion_effectsize(baseline + primary.mde, baseline), nobs1=n1, ratio=n0 / n1, alpha=0.05
    )
    assert power == pytest.approx(0.8, abs=1e-4)

    metrics = [c.metric for c in report.secondary]
    assert metrics == ["reach:pitch", "hangup_rate"]  # reach:converted is the primary metric
    for c in report.secondary:
        if c.metric == "hangup_rate":
            check(c, hand.hangups["llm_strict"], hand.hangups["hybrid"])
        else:
            stage = c.metric.split(":")[1]
            check(c, hand.reached["llm_strict"][stage], hand.reached["hybrid"][stage])
    adjusted = hand_holm([c.p_value for c in report.secondary])
    assert [c.p_adjusted for c in report.secondary] == pytest.approx(adjusted)
    assert [c.significant for c in report.secondary] == [p < 0.05 for p in adjusted]

    srm = next(h for h in report.health if h.name == "Sample ratio")
    expected = sps.chisquare([n0, n1], [(n0 + n1) / 2] * 2).pvalue
    assert srm.detail["p_value"] == pytest.approx(expected)
    assert srm.status == ("alarm" if expected < 0.001 else "ok")
    for test in report.variant_tests:
        rows = [
            hand.variants[test.arm][(test.stage, v)] for v in test.variants
        ]  # (calls, continued)
        table = [[kept, calls - kept] for calls, kept in rows]
        assert test.p_value == pytest.approx(sps.chi2_contingency(table, False)[1])


def test_report_files(seeded, tmp_path):
    report = build_report(seeded.store, seeded.experiment)
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"html", "md", "json"} and all(p.is_file() for p in paths.values())
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["schema"] == "salesbot-report:v1" and data["experiment"] == seeded.experiment
    assert data["arms"][0]["assigned"] == report.arms[0].assigned
    assert data["design"]["seed"] == "mini-seed" and data["design"]["hash_version"] == 2
    md = paths["md"].read_text(encoding="utf-8")
    assert f"# A/B report: {seeded.experiment}" in md and "| greeting |" in md
    html = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    external = re.findall(r'(?:src|href)\s*=\s*"(?!#)([^"]*)"', html)
    assert external == []  # self-contained: nothing to fetch
    for css in ("funnel-chart", "difference-chart", "compliance-chart", "latency-chart"):
        assert html.count(f'class="chart {css}"') == 1


def run_chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is required: apt-get install -y chromium"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def colour_pixels(pixels: np.ndarray, hex_colour: str, tolerance: float = 0.06) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels[..., :3] - target).max(axis=-1) < tolerance).sum())


@pytest.mark.parametrize("seeded", ["sqlite"], indirect=True)
def test_report_renders_in_headless_chromium(seeded, tmp_path):
    report = build_report(seeded.store, seeded.experiment)
    html = write_report(report, tmp_path / "out")["html"]
    url = html.resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = run_chromium(
        f"--screenshot={shot}", "--dump-dom", "--window-size=1200,2000", url, profile=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.1  # not a blank page
    # The funnel's bars in both arm colours are on screen (the cards' borders alone are ~2k px).
    assert colour_pixels(pixels, "#2563eb") > 8000
    assert colour_pixels(pixels, "#ea580c") > 8000
    dom = result.stdout
    assert "Uncaught" not in result.stderr and "<script" not in dom
    funnel = re.search(r'<svg class="chart funnel-chart".*?</svg>', dom, re.S)
    assert funnel, "the funnel chart is in the rendered DOM"
    bars = len(re.findall(r"fill: ?#2563eb", funnel.group(0)))
    assert bars >= len(report.funnel)  # one bar per stage (plus the legend swatch)
    for section in ("summary", "health", "primary", "funnel", "compliance", "variants", "latency"):
        assert f'id="{section}"' in dom
    assert dom.count('class="pill ') == len(report.health)


def test_cli_report(seeded, tmp_path):
    out = tmp_path / "cli"
    args = ["report", "--db", seeded.url, "--experiment", seeded.experiment, "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and "close rate" in result.output
    unknown = CliRunner().invoke(main, [*args[:3], "--experiment", "nope", "--out", str(out)])
    assert unknown.exit_code == 2 and seeded.experiment in unknown.output
    missing = tmp_path / "missing.db"
    no_db = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{missing}", *args[3:]])
    assert no_db.exit_code == 2 and "no SQLite database" in no_db.output
    assert not missing.exists()
    bad = CliRunner().invoke(main, ["report", "--db", "not a url", *args[3:]])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def add_rows(store: Store, experiment: str, rows: list[tuple[str, str, dict]]) -> None:
    with store.transaction() as db:
        for customer, arm, record in rows:
            db.add(
                Conversation(
                    id=uuid.uuid4().hex,
                    flow_name="mini",
                    flow_version="flow:v1:test",
                    customer_id=customer,
                    arm=arm,
                    experiment=experiment,
                    assignment=record,
                    stage="greeting",
                    status="ended",
                    outcome="refused",
                )
            )


def test_health_checks_raise_alarms(db_url, tmp_path):
    """A lopsided split, a tampered bucket and a customer in two arms are all caught."""
    store = Store(db_url)
    name = f"broken_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "experiments.yaml"
    path.write_text(
        f"experiments:\n  {name}:\n    seed: s\n    arms:\n"
        "      a: {mode: hybrid, weight: 0.5}\n      b: {mode: pure_llm, weight: 0.5}\n",
        encoding="utf-8",
    )
    experiment = load_experiments(path)[name]
    rows = []
    for i in range(400):
        a = experiment.assign(f"u{i}")
        if a.arm == "b" and i % 3:  # lose two thirds of arm b: a sample ratio mismatch
            continue
        rows.append((f"u{i}", a.arm, a.record()))
    (first, first_arm, record), (second, second_arm, _) = rows[0], rows[1]
    tampered = dict(record, bucket=(record["bucket"] + 1) % 10_000)
    rows.append((first, first_arm, tampered))  # a bucket that does not re-derive
    other = "b" if second_arm == "a" else "a"
    rows.append((second, other, experiment.assign(second).record()))  # the same unit, 2 arms
    add_rows(store, name, rows)
    report = build_report(store, name)
    status = {h.name: h.status for h in report.health}
    assert status["Sample ratio"] == "alarm" and status["Assignment"] == "alarm"
    assignment = next(h for h in report.health if h.name == "Assignment")
    assert assignment.detail["mismatched"] == 2 and assignment.detail["units_in_two_arms"] == 1
    assert report.summary[0].startswith("Do not act on these results")
    assert "sample ratio" in report.summary[0]
    render_html(report)  # renders without LLM turns, latencies or variants


def test_report_without_a_design_orders_the_funnel_from_the_data(db_url):
    """Conversations labelled with an experiment but started with a plain mode still report."""
    backend = FakeBackend(default=GOOD["pitch"])
    engine = make_engine(db_url, backend)
    label = f"label_{uuid.uuid4().hex[:8]}"
    for i, (arm, words) in enumerate(
        [("hybrid", ["yes that's me", "yes please"]), ("pure_llm", ["yes that's me", "no"])] * 3
    ):
        if arm == "pure_llm":  # its LLM opens the call with the greeting, then pitches
            backend.enqueue(GOOD["greeting"])
        reply = engine.start(f"c{i}", {"customer_name": "A"}, arm=arm, experiment=label)
        for text in words:
            reply = engine.turn(reply.session_id, text)
    report = build_report(engine.store, label)
    assert [r.stage for r in report.funnel] == ["greeting", "pitch", "converted"]
    assert report.control == "hybrid" and [a.assigned for a in report.arms] == [3, 3]
    assert report.arms[0].closed.count == 3 and report.arms[1].closed.count == 0
    status = {h.name: h.status for h in report.health}
    assert status["Assignment"] == "warn" and status["Sample ratio"] == "warn"
    with pytest.raises(ReportError, match=label):
        build_report(engine.store, "nothing_here")


def test_live_traffic_is_compared_as_two_independent_samples_and_says_so(seeded):
    """Without a simulation run the arms hold different customers: the two-sample test, named
    in every view; a paired run's test (McNemar) appears nowhere."""
    report = build_report(seeded.store, seeded.experiment)
    assert not report.paired and report.test == TWO_SAMPLE_TEST
    assert report.interval_method == TWO_SAMPLE_INTERVAL
    assert all(c.paired is None for c in [*report.primary, *report.secondary])
    (primary,) = report.primary
    for text in (render_html(report), render_markdown(report), " ".join(report.summary)):
        assert f"z-test p = {pval(primary.p_value)}" in html.unescape(text)
        assert "McNemar" not in text
