"""Any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server, Ollama) over httpx.

Failure handling, in the order a call meets it:

- circuit breaker: after ``breaker_failures`` failed calls in a row, calls fail at once for
  ``breaker_reset_s`` (then one trial call decides);
- deadline: the whole call, retries included, is bounded by ``params.deadline_s``. The HTTP
  work runs on a worker thread and the caller waits at most until the deadline, so neither a
  server that never answers nor one that trickles bytes can hold a turn past it;
- timeouts per attempt: ``connect_timeout_s`` to connect, ``timeout_s`` for the rest (each
  capped by the time left);
- retries: connection errors, timeouts, 429 and 5xx are retried up to ``retries`` times with
  exponential backoff and full jitter (``backoff_s * 2**attempt``, at most ``backoff_max_s``);
  other 4xx are configuration errors and fail at once.

Any failure raises ``BackendError`` (``DeadlineExceeded`` for the deadline), and the engine
sends the stage's fallback script. Sampling parameters the OpenAI API lacks (``top_k``,
``repetition_penalty``) are sent as extra fields, which vLLM, TGI and llama.cpp's server read;
set ``send_extras=False`` for servers that reject unknown fields. ``no_repeat_ngram_size`` and
``num_beams`` have no equivalent and are not sent.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpx

from engine.llm.base import (
    BackendError,
    BatchItem,
    Deadline,
    DeadlineExceeded,
    Generation,
    LLMBackend,
)
from engine.llm.circuit import CircuitBreaker

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MIN_ATTEMPT_S = 0.05  # no attempt is started with less time than this left


class _Retryable(BackendError):
    """A failure worth another attempt (connection, timeout, 429, 5xx)."""


class OpenAIBackend(LLMBackend):
    name = "openai"
    can_stream = True
    can_batch = True  # concurrent requests; the server batches them

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "default",
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        backoff_max_s: float = 2.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        send_extras: bool = True,
        max_concurrency: int = 64,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.send_extras = send_extras
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="openai-http")

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- the backend contract -----------------------------------------------------------------

    def _generate(self, request: BatchItem) -> Generation:
        deadline = Deadline.start(request.params)
        return self._wait(self._submit(request, deadline), deadline)

    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]:
        """Concurrent requests (the server batches them); a failed item gets finish_reason
        "error" or "deadline" and empty text, the others their replies."""
        batch = [BatchItem.of(item) for item in items]
        started = time.perf_counter()
        pending = []
        for item in batch:
            at = min(started + item.params.deadline_s, item.deadline_at or float("inf"))
            deadline = Deadline(at, item.params.deadline_s)
            pending.append((self._submit(item, deadline), deadline))
        results = []
        for submitted, deadline in pending:
            try:
                results.append(self._wait(submitted, deadline))
            except BackendError as exc:
                reason = "deadline" if isinstance(exc, DeadlineExceeded) else "error"
                results.append(Generation("", 0, 0, time.perf_counter() - started, reason))
        return results

    def _stream(self, request: BatchItem) -> Iterator[str]:
        """Server-sent events (``stream: true``). At the deadline the stream ends where it is
        (``DeadlineExceeded`` if nothing came yet). Retries happen only before the first chunk;
        a wait for the next chunk is bounded by the read timeout, itself capped by the time
        left when the attempt started."""
        deadline = Deadline.start(request.params)
        self._check_breaker()
        payload = {**self._payload(request), "stream": True}
        attempt = 0
        while True:
            left = self._time_left(deadline)
            yielded = False
            try:
                with self._client.stream(
                    "POST", self.url, json=payload, timeout=self._timeout(left)
                ) as response:
                    self._raise_for_status(response)
                    for content in _sse_contents(response.iter_lines()):
                        if deadline.passed():
                            if yielded:
                                return  # the draft so far is judged like any cut draft
                            raise deadline.exceeded()
                        if content:
                            yielded = True
                            yield content
                self.breaker.success()
                return
            except (httpx.TransportError, BackendError) as exc:
                error = _as_backend_error(exc)
            if yielded or not isinstance(error, _Retryable) or attempt >= self.retries:
                self.breaker.failure()
                raise self._final(error)
            self._backoff(attempt, deadline, None)
            attempt += 1

    # -- internals ------------------------------------------------------------------------------

    def _payload(self, request: BatchItem) -> dict[str, Any]:
        params, seed = request.params, request.seed
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p if params.do_sample else 1.0,
        }
        if seed is not None:
            payload["seed"] = seed
        if params.stop:
            payload["stop"] = list(params.stop)
        if self.send_extras:
            if params.do_sample and params.top_k:
                payload["top_k"] = params.top_k
            if params.repetition_penalty != 1.0:
                payload["repetition_penalty"] = params.repetition_penalty
        return payload

    def _check_breaker(self) -> None:
        if not self.breaker.allow():
            raise BackendError(
                f"circuit open for {self.base_url}: retrying in {self.breaker.retry_in():.1f} s"
            )

    def _submit(self, request: BatchItem, deadline: Deadline) -> tuple[Future, threading.Event]:
        self._check_breaker()
        cancel = threading.Event()
        payload = self._payload(request)
        return self._pool.submit(self._complete, payload, deadline, cancel), cancel

    def _wait(self, submitted: tuple[Future, threading.Event], deadline: Deadline) -> Generation:
        future, cancel = submitted
        try:
            return future.result(timeout=deadline.left())
        except FutureTimeout:
            cancel.set()  # the worker gives up at its next check; no retry after this
            self.breaker.failure()
            raise deadline.exceeded(self.base_url) from None

    def _complete(
        self, payload: dict[str, Any], deadline: Deadline, cancel: threading.Event
    ) -> Generation:
        """The attempts of one call, on a worker thread. Records the outcome in the breaker
        unless the caller already gave up (then the caller recorded it)."""
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                left = self._time_left(deadline)
                response = self._client.post(self.url, json=payload, timeout=self._timeout(left))
                self._raise_for_status(response)
                generation = _parse_completion(response, time.perf_counter() - started)
                if not cancel.is_set():
                    self.breaker.success()
                return generation
            except (httpx.TransportError, BackendError) as exc:
                error = _as_backend_error(exc)
            log.warning("LLM call to %s failed (attempt %d): %s", self.url, attempt + 1, error)
            if cancel.is_set() or not isinstance(error, _Retryable) or attempt >= self.retries:
                if not cancel.is_set():
                    self.breaker.failure()
                raise self._final(error)
            self._backoff(attempt, deadline, cancel)
            attempt += 1

    def _final(self, error: BackendError) -> BackendError:
        if isinstance(error, DeadlineExceeded):
            return error
        return BackendError(f"{self.base_url}: {error}")

    @staticmethod
    def _time_left(deadline: Deadline) -> float:
        left = deadline.left()
        if left < MIN_ATTEMPT_S:
            raise deadline.exceeded()
        return left

    def _timeout(self, left: float) -> httpx.Timeout:
        return httpx.Timeout(min(self.timeout_s, left), connect=min(self.connect_timeout_s, left))

    def _backoff(self, attempt: int, deadline: Deadline, cancel: threading.Event | None) -> None:
        pause = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**attempt))
        pause = min(pause, max(0.0, deadline.left() - MIN_ATTEMPT_S))
        if cancel is not None:
            cancel.wait(pause)
        else:
            time.sleep(pause)

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        try:
            body = response.read().decode("utf-8", "replace")[:300]
        except httpx.HTTPError:
            body = ""
        message = f"HTTP {response.status_code}: {body}".strip()
        if response.status_code in RETRY_STATUS:
            raise _Retryable(message)
        raise BackendError(message)


def _as_backend_error(exc: httpx.TransportError | BackendError) -> BackendError:
    """A failed attempt as the error it counts as: timeouts and connection failures are worth
    another attempt, a backend error is what it says."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return _Retryable(f"timed out: {exc!r}")
    return _Retryable(f"connection failed: {exc!r}")


def _parse_completion(response: httpx.Response, seconds: float) -> Generation:
    try:
        data = response.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"unexpected chat-completions response: {exc!r}") from None
    usage = data.get("usage") or {}
    reason = choice.get("finish_reason") or "stop"
    return Generation(
        text=text.strip(),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        seconds=seconds,
        finish_reason="length" if reason == "length" else "stop",
    )


def _sse_contents(lines: Iterator[str]) -> Iterator[str]:
    """The ``delta.content`` of each ``data:`` event of an SSE chat-completions stream."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
            delta = event["choices"][0].get("delta") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"unexpected stream event {data[:100]!r}: {exc!r}") from None
        yield delta.get("content") or ""
