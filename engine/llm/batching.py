"""Group concurrent ``generate`` calls into batched calls of the inner backend.

The simulator (and a busy HTTP worker) runs many conversations in threads through the same
``Engine.turn`` code path; each thread calls ``backend.generate`` for its own session. On a CPU,
one forward pass over 32 sessions costs little more than over one, so this wrapper collects the
calls waiting at the same moment and sends them to ``inner.generate_batch`` together.

Scheduling: a worker thread takes the first waiting request, then keeps collecting for at most
``max_wait_ms`` (or until ``max_batch`` requests), and runs them. While a batch runs, new requests
queue up and form the next batch at once, so under load batches fill themselves and a lone
request waits only ``max_wait_ms``. Requests with different generation parameters can share a
batch when the inner backend handles per-row parameters (``mixed_params=True``, the in-process
backend does); otherwise they are grouped by parameters.

Every caller waits at most its own ``params.deadline_s`` (queueing included). Its row is told a
deadline slightly earlier, so the inner backend cuts the draft there and the caller gets it in
time; a caller whose request produced nothing by then gets ``DeadlineExceeded`` and the engine
sends the fallback, while the batch carries on for the others.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from engine.flow.generation import GenerationParams
from engine.llm.base import BackendError, BatchItem, ChatMessage, DeadlineExceeded, Generation

CUT_MARGIN_S = 0.25  # how much earlier than the caller's deadline a row's decoding is cut


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@dataclass
class _Request:
    item: BatchItem
    future: Future


class BatchingBackend:
    """Wraps a backend that has ``generate_batch``; safe to call from many threads."""

    def __init__(
        self,
        inner,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        mixed_params: bool | None = None,
    ):
        if not hasattr(inner, "generate_batch"):
            raise TypeError(f"{type(inner).__name__} has no generate_batch to batch with")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.inner = inner
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.mixed_params = (
            getattr(inner, "name", "") == "transformers" if mixed_params is None else mixed_params
        )
        self.name = f"batched-{getattr(inner, 'name', 'backend')}"
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    # -- the backend contract -----------------------------------------------------------------

    @property
    def can_constrain(self) -> bool:
        return getattr(self.inner, "can_constrain", False)

    def load(self) -> None:
        load = getattr(self.inner, "load", None)
        if load is not None:
            load()

    def generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
        choices: Sequence[str] | None = None,
    ) -> Generation:
        if self._closed:
            raise BackendError("the batching backend was closed")
        deadline = time.perf_counter() + params.deadline_s
        future: Future = Future()
        # The row is cut a little before the caller stops waiting, so a draft cut at the
        # deadline still reaches the caller (and the compliance filter) in time.
        cut = deadline - min(CUT_MARGIN_S, 0.1 * params.deadline_s)
        item = BatchItem(
            messages, params, seed, session_key, deadline_at=cut,
            choices=None if choices is None else tuple(choices),
        )  # fmt: skip
        self._ensure_worker()
        self._queue.put(_Request(item, future))
        try:
            generation = future.result(timeout=max(0.0, deadline - time.perf_counter()))
        except FutureTimeout:
            raise DeadlineExceeded(f"no reply within {params.deadline_s:g} s") from None
        if generation.finish_reason == "error":
            raise BackendError("the backend failed on this request")
        if generation.finish_reason == "deadline" and not generation.text:
            raise DeadlineExceeded(f"no reply within {params.deadline_s:g} s")
        return generation

    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]:
        return self.inner.generate_batch(items)

    def stream(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        seed: int | None = None,
        session_key: str | None = None,
    ) -> Iterator[str]:
        stream = getattr(self.inner, "stream", None)
        if stream is None:
            raise BackendError(f"{type(self.inner).__name__} cannot stream")
        return stream(messages, params, seed=seed, session_key=session_key)

    def release(self, session_key: str) -> None:
        release = getattr(self.inner, "release", None)
        if release is not None:
            release(session_key)

    def close(self) -> None:
        """Stop the worker; calls waiting in the queue fail with ``BackendError``."""
        self._closed = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=5)

    # -- the worker ---------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="llm-batching", daemon=True)
                self._worker.start()

    def _collect(self, first: _Request) -> list[_Request]:
        batch = [first]
        until = time.perf_counter() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                try:
                    request = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if request is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            batch.append(request)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._fail_waiting()
                return
            now = time.perf_counter()
            live = []
            for request in self._collect(first):
                if request.item.deadline_at is not None and request.item.deadline_at <= now:
                    request.future.set_exception(DeadlineExceeded("expired while queued"))
                else:
                    live.append(request)
            for group in self._groups(live):
                self._dispatch(group)

    def _groups(self, requests: list[_Request]) -> list[list[_Request]]:
        if self.mixed_params:
            return [requests] if requests else []
        groups: dict[GenerationParams, list[_Request]] = {}
        for request in requests:
            groups.setdefault(request.item.params, []).append(request)
        return list(groups.values())

    def _dispatch(self, group: list[_Request]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(group)
        self.stats.sizes.append(len(group))
        try:
            results = self.inner.generate_batch([r.item for r in group])
        except Exception as exc:  # one failed batch fails its callers, never the worker
            error = exc if isinstance(exc, BackendError) else BackendError(str(exc))
            for request in group:
                request.future.set_exception(error)
            return
        for request, result in zip(group, results, strict=True):
            request.future.set_result(result)

    def _fail_waiting(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.future.set_exception(BackendError("the batching backend was closed"))
