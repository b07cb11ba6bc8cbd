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
from dataclasses import dataclass, field, replace

from engine.flow.generation import GenerationParams
from engine.llm.base import (
    BackendError,
    BackendWrapper,
    BatchItem,
    Deadline,
    DeadlineExceeded,
    Generation,
    LLMBackend,
)

CUT_MARGIN_S = 0.25  # how much earlier than the caller's deadline a row's decoding is cut


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0

    def count(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.sizes.append(size)


@dataclass
class Waiting:
    """A caller's request and the future it waits on."""

    item: BatchItem
    future: Future


def run_batch(inner: LLMBackend, batch: Sequence[Waiting], stats: BatchStats) -> None:
    """Send ``batch`` to ``inner`` as one call and settle every caller's future. A failed
    batch fails its callers (they fall back), never the thread that ran it."""
    stats.count(len(batch))
    try:
        results = inner.generate_batch([waiting.item for waiting in batch])
    except Exception as exc:
        error = exc if isinstance(exc, BackendError) else BackendError(str(exc))
        for waiting in batch:
            waiting.future.set_exception(error)
        return
    for waiting, result in zip(batch, results, strict=True):
        waiting.future.set_result(result)


def check_can_batch(inner: LLMBackend, max_batch: int) -> None:
    """The batchers' shared precondition: an inner backend that batches, a positive size."""
    if not inner.can_batch:
        raise TypeError(f"{type(inner).__name__} has no generate_batch to batch with")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")


class BatchingBackend(BackendWrapper):
    """Wraps a backend that can batch; safe to call from many threads."""

    can_batch = True

    def __init__(
        self,
        inner: LLMBackend,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        mixed_params: bool | None = None,
    ):
        check_can_batch(inner, max_batch)
        super().__init__(inner, f"batched-{inner.name}")
        self.can_stream = inner.can_stream
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.mixed_params = inner.can_mix_params if mixed_params is None else mixed_params
        self.stats = BatchStats()
        self._queue: queue.Queue[Waiting | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    # -- the backend contract -----------------------------------------------------------------

    def _generate(self, request: BatchItem) -> Generation:
        if self._closed:
            raise BackendError("the batching backend was closed")
        params = request.params
        deadline = Deadline.start(params)
        future: Future = Future()
        # The row is cut a little before the caller stops waiting, so a draft cut at the
        # deadline still reaches the caller (and the compliance filter) in time.
        cut = deadline.at - min(CUT_MARGIN_S, 0.1 * params.deadline_s)
        item = replace(request, deadline_at=cut)
        self._ensure_worker()
        self._queue.put(Waiting(item, future))
        try:
            generation = future.result(timeout=deadline.left())
        except FutureTimeout:
            raise deadline.exceeded() from None
        if generation.finish_reason == "error":
            raise BackendError("the backend failed on this request")
        if generation.finish_reason == "deadline" and not generation.text:
            raise deadline.exceeded()
        return generation

    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]:
        return self.inner.generate_batch(items)

    def _stream(self, request: BatchItem) -> Iterator[str]:
        r = request
        return self.inner.stream(
            list(r.messages), r.params, r.seed, r.session_key, choices=r.choices
        )

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

    def _collect(self, first: Waiting) -> list[Waiting]:
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

    def _groups(self, requests: list[Waiting]) -> list[list[Waiting]]:
        if self.mixed_params:
            return [requests] if requests else []
        groups: dict[GenerationParams, list[Waiting]] = {}
        for request in requests:
            groups.setdefault(request.item.params, []).append(request)
        return list(groups.values())

    def _dispatch(self, group: list[Waiting]) -> None:
        run_batch(self.inner, group, self.stats)

    def _fail_waiting(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.future.set_exception(BackendError("the batching backend was closed"))
