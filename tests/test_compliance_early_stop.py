"""Early stop on a streamed draft, and the engine's audit row, with a streaming fake backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.compliance import ComplianceFilter, stream_and_match
from engine.compliance.early_stop import complete_words
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.flow.generation import GenerationParams
from engine.flow.loader import load_flow
from engine.llm.base import BackendError, BatchItem
from intents import load_or_train
from storage import Store
from tests.fakes import FakeBackend
from tests.flow_faults import copy_mini
from tests.test_engine import MINI

FLOW = load_flow(MINI)
SLOTS = {"customer_name": "Alex", "agent_name": "Sam"}
POLICY = FLOW.stages["pitch"].compliance
ON_SCRIPT = (
    "Our faster plan gives you 500 megabits for eight pounds more a month, and honestly it is "
    "a lovely plan that I am sure you and everyone in your household will enjoy for many years"
)


class StreamingFakeBackend(FakeBackend):
    """FakeBackend plus ``stream``: yields each queued reply word by word, like a token stream.

    Records how many chunks each stream handed out and whether it was closed before its end
    (closing is how the engine stops a real backend's generation). Queue ``(text, n)`` to make
    the stream fail with a BackendError after ``n`` chunks.
    """

    can_stream = True

    def __init__(self, default: str = ""):
        super().__init__(default)
        self.streams: list[dict] = []

    def _stream(self, request: BatchItem) -> Iterator[str]:
        self.history.append((list(request.messages), request.params))
        item = self.queue.popleft() if self.queue else self.default
        text, fail_after = item if isinstance(item, tuple) else (item, None)
        record = {"sent": 0, "closed_early": False, "session_key": request.session_key}
        self.streams.append(record)
        return self._chunks(text.split(" "), fail_after, record)

    @staticmethod
    def _chunks(words: list[str], fail_after: int | None, record: dict) -> Iterator[str]:
        try:
            for i, word in enumerate(words):
                if fail_after is not None and i == fail_after:
                    raise BackendError("stream broke midway")
                record["sent"] += 1
                yield word if i == 0 else " " + word
        except GeneratorExit:
            record["closed_early"] = True
            raise


def matcher(flt: ComplianceFilter, policy=POLICY):
    return lambda text: flt.match(text, policy, SLOTS)


def test_complete_words_drops_a_half_streamed_word():
    assert complete_words("Our faster pl") == "Our faster"
    assert complete_words("Our faster ") == "Our faster"
    assert complete_words("Our") == ""


def test_a_settled_draft_is_cut_short_and_decided_on_what_was_generated():
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    backend = StreamingFakeBackend(default=ON_SCRIPT)
    stream = backend.stream([], GenerationParams())
    drafted = stream_and_match(stream, matcher(flt), POLICY, stable_checks=2)
    record = backend.streams[0]
    assert drafted.stopped_early and record["closed_early"]
    assert drafted.chunks == record["sent"] < len(ON_SCRIPT.split(" "))
    assert ON_SCRIPT.startswith(drafted.text) and drafted.match.text == drafted.text
    assert drafted.match.accepted(POLICY) == "pitch.speed"
    full = flt.match(ON_SCRIPT, POLICY, SLOTS)
    assert full.accepted(POLICY) == "pitch.speed"  # the same decision as the whole draft


def test_an_unsettled_draft_is_read_to_its_end_and_judged_whole():
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    gibberish = "zork blat quux " * 8
    backend = StreamingFakeBackend(default=gibberish.strip())
    drafted = stream_and_match(
        backend.stream([], GenerationParams()), matcher(flt), POLICY, stable_checks=2
    )
    assert not drafted.stopped_early and drafted.checks > 0
    assert drafted.text == gibberish.strip() and drafted.match.text == drafted.text
    assert drafted.match.accepted(POLICY) is None
    assert not backend.streams[0]["closed_early"]


def test_zero_stable_checks_turns_early_stop_off():
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    backend = StreamingFakeBackend(default=ON_SCRIPT)
    drafted = stream_and_match(
        backend.stream([], GenerationParams()), matcher(flt), POLICY, stable_checks=0
    )
    assert (drafted.stopped_early, drafted.checks, drafted.text) == (False, 0, ON_SCRIPT)


def test_a_rule_hit_keeps_the_stream_going():
    from dataclasses import replace

    policy = replace(POLICY, forbidden_patterns=(r"\bmegabits\b",))
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    backend = StreamingFakeBackend(default=ON_SCRIPT)
    drafted = stream_and_match(
        backend.stream([], GenerationParams()), matcher(flt, policy), policy, stable_checks=2
    )
    assert not drafted.stopped_early and drafted.match.rule_hits


# ---------------------------------------------------------------- through the engine


def engine_for(flow_dir: Path, db_url: str, backend: FakeBackend) -> Engine:
    flow = load_flow(flow_dir)
    classifier = load_or_train({k: list(v) for k, v in flow.intents.items()}, language="en")
    compliance = ComplianceFilter(flow, CharNgramEmbedder())
    return Engine(flow, classifier, backend, compliance, Store(db_url))


def test_engine_streams_stops_early_and_audits_the_partial_draft(db_url):
    backend = StreamingFakeBackend().enqueue(ON_SCRIPT)
    engine = engine_for(MINI, db_url, backend)
    session = engine.start("stream-1", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "yes")
    assert (reply.source, reply.script_id) == ("llm", "pitch.speed")
    assert reply.text == engine.flow.scripts["pitch.speed"].text
    assert reply.latencies_ms["stopped_early"] == 1
    assert reply.latencies_ms["stream_chunks"] == backend.streams[0]["sent"]
    assert backend.streams[0]["session_key"] == session
    [audit] = engine.store.compliance_decisions(session)
    assert ON_SCRIPT.startswith(audit.raw_text) and len(audit.raw_text) < len(ON_SCRIPT)
    assert audit.top_k["reason"] == "ok" and audit.rule_hits == []


def test_engine_stream_failure_midway_sends_the_fallback(db_url):
    backend = StreamingFakeBackend().enqueue((ON_SCRIPT, 3))
    engine = engine_for(MINI, db_url, backend)
    session = engine.start("stream-2", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "yes")
    assert reply.source == "fallback"
    [audit] = engine.store.compliance_decisions(session)
    assert audit.raw_text is None and "midway" in audit.error


def replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_pass_mode_never_cuts_a_draft(tmp_path, db_url):
    folder = copy_mini(tmp_path)
    replace_line(folder / "flow.yaml", "  threshold: 0.5\n", "  threshold: 0.5\n  mode: pass\n")
    backend = StreamingFakeBackend().enqueue(ON_SCRIPT)
    engine = engine_for(folder, db_url, backend)
    session = engine.start("stream-3", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "yes")
    assert backend.streams == [] and len(backend.history) == 1  # generate(), not stream()
    assert reply.text == ON_SCRIPT and "stopped_early" not in reply.latencies_ms


def test_rule_hits_are_written_to_the_audit_row(tmp_path, db_url):
    folder = copy_mini(tmp_path)
    replace_line(
        folder / "flow.yaml",
        "  threshold: 0.5\n",
        "  threshold: 0.5\n  forbidden: {phrases: [risk free], patterns: ['\\d+\\s*%\\s*off']}\n",
    )
    draft = "Our faster plan gives you 500 megabits, 30% off and risk free"
    engine = engine_for(folder, db_url, FakeBackend().enqueue(draft))
    session = engine.start("rules-1", {"customer_name": "Alex"}).session_id
    reply = engine.turn(session, "yes")
    assert reply.source == "fallback"
    [audit] = engine.store.compliance_decisions(session)
    assert audit.decision == "fallback" and audit.top_k["reason"] == "rule"
    assert audit.rule_hits == [
        {"rule": "phrase", "value": "risk free", "match": "risk free"},
        {"rule": "pattern", "value": r"\d+\s*%\s*off", "match": "30% off"},
    ]
    assert audit.top_k["ids"][0] == "pitch.speed"


@pytest.mark.parametrize("stable_checks", [1, 3])
def test_more_stable_checks_read_more_of_the_stream(stable_checks):
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    backend = StreamingFakeBackend(default=ON_SCRIPT)
    drafted = stream_and_match(
        backend.stream([], GenerationParams()), matcher(flt), POLICY, stable_checks=stable_checks
    )
    assert drafted.stopped_early and drafted.checks == stable_checks


def test_a_match_too_close_to_the_threshold_never_stops_the_stream():
    flt = ComplianceFilter(FLOW, CharNgramEmbedder())
    backend = StreamingFakeBackend(default=ON_SCRIPT)
    drafted = stream_and_match(
        backend.stream([], GenerationParams()), matcher(flt), POLICY, stable_checks=2, lead=0.6
    )
    assert not drafted.stopped_early and drafted.text == ON_SCRIPT
    assert drafted.match.accepted(POLICY) == "pitch.speed"  # decided, as always, on the text
