"""Early stop: read the LLM's draft as it streams and stop once the nearest script is settled.

In strict mode the customer hears an approved script, never the draft, so generating the rest of
a draft whose nearest script is already clear only costs time. The draft is matched every few
complete words; once the same script has been accepted (threshold, margin and hard rules) with
a score at least ``lead`` above the threshold for ``stable_checks`` checks in a row, the stream is
closed, which must stop generation (the backend contract for ``stream``). A stream that never
settles runs to its end and is judged whole. The decision is then made, as always, on exactly
the text generated. Defaults (2 checks, every 3 words, lead 0.05) come from replaying real
SmolLM2 drafts: see benchmarks/compliance_early_stop.py and docs/benchmarks.md.

Not used in pass mode: there the draft itself is sent, and a cut draft is a broken sentence.
The engine's draft path (:mod:`engine.drafting`) decides when to stream; this module only reads
a stream and says when to stop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.compliance.filter import Match
from engine.flow.model import CompliancePolicy

EVERY_WORDS = 3  # complete words between two checks
MIN_WORDS = 4  # no check before this many words: openings ("Great, so") match anything
LEAD = 0.05  # a check counts towards stopping only this far above the threshold
_LAST_SPACE = re.compile(r"\s(?=\S*$)")


@dataclass(frozen=True)
class StreamedDraft:
    text: str  # the draft as far as it was generated
    match: Match  # the match the decision is made on (of ``text``)
    chunks: int  # chunks read from the stream
    checks: int  # matches run while streaming
    stopped_early: bool
    stream_ms: float  # wall time reading the stream, checks included

    def stats(self) -> dict[str, float]:
        """Numbers for the audit row's ``latencies`` JSON."""
        return {
            "stream_chunks": self.chunks,
            "stream_checks": self.checks,
            "stopped_early": int(self.stopped_early),
        }


def complete_words(text: str) -> str:
    """``text`` up to its last whitespace: a streamed token may be half a word ("Fib")."""
    found = _LAST_SPACE.search(text)
    return text[: found.start()] if found else ""


def stream_and_match(
    stream: Iterator[str],
    matcher: Callable[[str], Match],
    policy: CompliancePolicy,
    *,
    stable_checks: int = 2,
    every_words: int = EVERY_WORDS,
    min_words: int = MIN_WORDS,
    lead: float = LEAD,
) -> StreamedDraft:
    """Consume ``stream`` until the accepted script is stable for ``stable_checks`` checks.

    ``matcher`` maps a (partial) draft to a :class:`Match`; the returned ``match`` is always of
    the returned ``text``, so the caller decides on exactly what was matched. Exceptions from the
    stream propagate (the engine turns a ``BackendError`` into a fallback) after it is closed.
    """
    started = time.perf_counter()
    text, chunks, checks, streak, checked_words = "", 0, 0, 0, 0
    last_script: str | None = None
    last: Match | None = None
    stopped = False
    try:
        for chunk in stream:
            chunks += 1
            text += chunk
            if stable_checks <= 0:
                continue
            head = complete_words(text)
            words = len(head.split())
            if words < min_words or words - checked_words < every_words:
                continue
            checked_words = words
            last = matcher(head)
            checks += 1
            script = last.accepted(policy)
            if script is not None and last.top_k[0][1] < policy.threshold + lead:
                script = None  # accepted, but too close to the line to bet the rest on it
            same = script is not None and script == last_script
            streak = streak + 1 if same else int(script is not None)
            last_script = script
            if streak >= stable_checks:
                stopped = True
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    stream_ms = (time.perf_counter() - started) * 1000
    if stopped and last is not None:
        return StreamedDraft(last.text, last, chunks, checks, True, stream_ms)
    text = text.strip()
    match = last if last is not None and last.text == text else matcher(text)
    return StreamedDraft(text, match, chunks, checks, False, stream_ms)
