"""One LLM draft, the only way an LLM stage's text reaches the compliance filter.

The engine builds the prompt (which prompt is a policy choice: a stage's goal, or a pure-LLM
arm's playbook) and hands it here; this module asks the backend for a draft and has the filter
judge it, so the reply is an approved script or the stage's fallback, never the raw draft.

Two ways to get the draft, one result:

- **stream** (strict mode, early stop on, a backend that ``can_stream``): the draft is matched
  while it streams and the stream is closed once its nearest script is settled
  (:mod:`engine.compliance.early_stop`); the decision is made on exactly the text generated.
- **generate**: the whole draft, then one check.

Either way a ``BackendError`` (a failure or a missed deadline, raised when the call starts or
midway through a stream) ends in the stage's fallback with the error recorded, and the same
latency keys are filled in: ``generate_ms`` and ``compliance_ms`` (plus the stream's counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from engine.compliance import ComplianceFilter, ComplianceResult
from engine.compliance.early_stop import stream_and_match
from engine.flow.model import Stage
from engine.llm.base import BackendError, ChatMessage, LLMBackend

Draft = tuple[str | None, ComplianceResult, str | None]  # (raw draft, decision, backend error)


def draft_reply(
    backend: LLMBackend,
    compliance: ComplianceFilter,
    messages: list[ChatMessage],
    stage: Stage,
    slots: dict[str, str],
    latencies: dict[str, float],
    *,
    session_key: str,
    seed: int | None,
    early_stop: int = 0,
    choices: Sequence[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Draft:
    """The LLM's draft for ``stage`` and the filter's decision on it; fills ``latencies``.

    ``early_stop``: stable checks before a streamed draft is cut (0: never stream).
    ``choices``: constrained decoding (the backend ``can_constrain``): the draft is one of these
    texts, chosen as soon as its prefix names one, so it is not streamed for early stop.
    """
    policy, params = stage.compliance, stage.generation
    assert policy is not None and params is not None, f"{stage.name} is not an LLM stage"
    streams = (
        choices is None and bool(early_stop) and policy.mode == "strict" and backend.can_stream
    )
    extra = {} if choices is None else {"choices": choices}
    before = clock()
    try:
        # The backend enforces params.deadline_s and raises BackendError past it.
        if streams:
            drafted = stream_and_match(
                backend.stream(messages, params, seed=seed, session_key=session_key),
                lambda text: compliance.match(text, policy, slots),
                policy,
                stable_checks=early_stop,
            )
            latencies["generate_ms"] = drafted.stream_ms  # checks made while streaming included
            latencies.update(drafted.stats())
        else:
            generation = backend.generate(
                messages, params, seed=seed, session_key=session_key, **extra
            )
            latencies["generate_ms"] = (clock() - before) * 1000
    except BackendError as exc:
        latencies["generate_ms"] = (clock() - before) * 1000
        result = compliance.fallback(stage.name, policy, session_key, slots)
        sent(backend, messages, result.text, session_key)
        return None, result, str(exc)
    before = clock()
    if streams:
        raw = drafted.text
        result = compliance.decide(drafted.match, stage.name, policy, session_key, slots)
        matched_ms = drafted.match.embed_ms + drafted.match.match_ms  # matched while streaming
    else:
        raw = generation.text
        result = compliance.check(raw, stage.name, policy, session_key, slots)
        matched_ms = 0.0
    latencies["compliance_ms"] = (clock() - before) * 1000 + matched_ms
    sent(backend, messages, result.text, session_key)
    return raw, result, None


def sent(backend: LLMBackend, messages: list[ChatMessage], reply: str | None, key: str) -> None:
    """Tell the backend what the customer now hears after ``messages`` (a fallback too): the
    next turn's prompt continues with it, so a backend may encode it ahead (``prefill``).

    The engine's closing note (a system message after the customer's words: the stage and the
    classifier's reading) is this turn's only: the next prompt's history holds the words and
    the reply, so the note is left out here, or the encoded prefix would part from the next
    prompt before the reply."""
    if reply:
        said = messages[:-1] if messages and messages[-1]["role"] == "system" else messages
        backend.prefill([*said, {"role": "assistant", "content": reply}], key)
