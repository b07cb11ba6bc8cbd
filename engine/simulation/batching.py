"""The LLM backend a simulation runs with: batches formed in rounds, so a seed fixes the report.

Three things set this apart from :class:`engine.llm.batching.BatchingBackend` (the time-window
batcher a live service would use):

- **Rounds, not time windows.** A batched forward pass does not give a row bit for bit the
  logits it would get in another batch: the matrix kernels' blocking and the padded attention
  width depend on which rows share the pass. With sampled drafts, a logit that moves in its
  last bits changes a token now and then (measured: one or two drafts in a 100-customer run),
  and the time-window batcher made batches out of whatever arrived within 5 ms, so two runs
  with the same seed differed. Here the conversations in flight are *members* of a round: a
  batch is sent only when every member is waiting for the LLM (or has left), in session-id
  order, in chunks of ``max_batch``. Which requests share a batch then depends only on the
  conversations, never on thread timing, and two runs with the same seed on the same machine
  store the same drafts. (The run's conversations are handed out in order from one queue; the
  set of requests in each round does not depend on which thread runs which conversation.)
- **No streaming.** The engine streams a draft (and cuts it short once its nearest script is
  settled) whenever the backend can stream. That is the right trade for one live caller, but a
  streamed generation is one sequence in one forward pass, so a simulation would not batch at
  all. The batcher has ``generate`` (and ``release``) but not ``stream``, so the engine takes
  its whole-draft path. Each draft is still judged by the same compliance filter.
- **No deadline.** Simulated time is not wall time: each call also waits for the others in its
  round, which a live caller never does, so a stage's ``deadline_s`` (a live-latency guard,
  queueing included) would turn drafts into deadline fallbacks whenever the machine is busy,
  and the results would measure the machine instead of the bot. Requests go out with
  :data:`SIMULATION_DEADLINE_S` (a day); what a slow backend does to live calls is measured by
  the LLM-stage benchmarks.

Outside :meth:`RoundBatcher.members` (one conversation driven by hand, as in tests), each call
is its own batch of one. A member that blocks on something other than the LLM while another
member's round waits would hang the run (the engine's per-session locks are why none does);
should a round stay incomplete for :data:`ROUND_STALL_S` with no batch running and no member
arriving, what is waiting is sent anyway and counted in ``stats.stalled`` (the run finishes,
but its batches then depended on timing, and ``salesbot simulate`` says so).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, replace

from engine.flow.generation import GenerationParams
from engine.llm.base import BackendError, BackendWrapper, BatchItem, Generation, LLMBackend
from engine.llm.batching import BatchStats, Waiting, check_can_batch, run_batch

SIMULATION_DEADLINE_S = 86_400.0  # set on a copy; GenerationParams caps what flows may declare
ROUND_STALL_S = 30.0  # an incomplete round, with no batch running, is sent after this long


@dataclass
class RoundStats(BatchStats):
    stalled: int = 0  # rounds sent incomplete because a member never came


@dataclass
class _Request(Waiting):
    arrival: int  # tie-break for requests without a session key


def relaxed(params: GenerationParams) -> GenerationParams:
    """``params`` without the live deadline (see the module docstring)."""
    return params.model_copy(update={"deadline_s": SIMULATION_DEADLINE_S})


class RoundBatcher(BackendWrapper):
    """Wraps a backend that can batch; sends a round's requests when all members wait.

    ``max_batch`` 1 keeps the rounds but runs every request alone (the unbatched reference).
    """

    def __init__(self, inner: LLMBackend, max_batch: int = 32):
        check_can_batch(inner, max_batch)
        super().__init__(inner)
        self.max_batch = max_batch
        self.stats = RoundStats()
        self.stall_s = ROUND_STALL_S
        self._lock = threading.Lock()
        self._running = 0  # rounds being dispatched now
        self._last_activity = time.monotonic()  # a request arrived, a member left, a round ended
        self._members = 0
        self._pending: list[_Request] = []
        self._arrivals = 0

    # -- membership ------------------------------------------------------------------------------

    @contextmanager
    def members(self, count: int) -> Iterator[None]:
        """``count`` threads take part in rounds until each calls :meth:`leave` (or the block
        ends). A round is sent when every member still in is waiting for the LLM."""
        with self._lock:
            if self._members:
                raise RuntimeError("rounds are already open")
            self._members = count
        try:
            yield
        finally:
            with self._lock:
                self._members = 0
                ready = self._take_pending()
            self._dispatch(ready)

    def leave(self) -> None:
        """A member has no more conversations; the round no longer waits for it."""
        with self._lock:
            self._members = max(0, self._members - 1)
            self._last_activity = time.monotonic()
            ready = self._take_pending() if len(self._pending) >= self._members else []
        self._dispatch(ready)

    # -- the backend contract ----------------------------------------------------------------

    def _generate(self, item: BatchItem) -> Generation:
        future: Future = Future()
        with self._lock:
            self._arrivals += 1
            request = _Request(replace(item, params=relaxed(item.params)), future, self._arrivals)
            self._pending.append(request)
            self._last_activity = time.monotonic()
            ready = self._take_pending() if len(self._pending) >= self._members else []
        self._dispatch(ready)
        generation = self._wait(request)
        if generation.finish_reason == "error":
            raise BackendError("the backend failed on this request")
        return generation

    # -- rounds ----------------------------------------------------------------------------------

    def _wait(self, request: _Request) -> Generation:
        while True:
            try:
                return request.future.result(timeout=self.stall_s)
            except FutureTimeout:
                with self._lock:
                    quiet = time.monotonic() - self._last_activity >= self.stall_s
                    stalled = quiet and not self._running and request in self._pending
                    ready = self._take_pending() if stalled else []
                    self.stats.stalled += bool(ready)
                self._dispatch(ready)

    def _take_pending(self) -> list[_Request]:
        ready, self._pending = self._pending, []
        if ready:
            self._running += 1  # _dispatch counts it down
        return ready

    def _dispatch(self, ready: list[_Request]) -> None:
        """Run a round in the thread that completed it, in session order, ``max_batch`` at a
        time; each chunk's callers go on as soon as their chunk is done."""
        if not ready:
            return
        ready.sort(key=lambda r: (r.item.session_key or "", r.arrival))
        try:
            self._run_chunks(ready)
        finally:
            with self._lock:
                self._running -= 1
                self._last_activity = time.monotonic()

    def _run_chunks(self, ready: list[_Request]) -> None:
        for start in range(0, len(ready), self.max_batch):
            run_batch(self.inner, ready[start : start + self.max_batch], self.stats)


class BatchOnly(BackendWrapper):
    """A backend that cannot batch, without its ``stream`` capability and its deadlines (see
    the module docstring); calls from many threads are serialised by the backend itself."""

    def _generate(self, item: BatchItem) -> Generation:
        r = item
        extra = {} if r.choices is None else {"choices": r.choices}  # only constrained calls
        return self.inner.generate(
            list(r.messages), relaxed(r.params), r.seed, r.session_key, **extra
        )

    @property
    def stats(self):
        """The batching statistics of the wrapped backend, when it keeps them."""
        return getattr(self.inner, "stats", None)


def simulation_backend(inner: LLMBackend, max_batch: int = 32) -> RoundBatcher | BatchOnly:
    """``inner`` in rounds of at most ``max_batch`` requests when it can batch; otherwise
    called directly (an OpenAI-compatible server batches by itself)."""
    if inner.can_batch:
        return RoundBatcher(inner, max_batch=max_batch)
    return BatchOnly(inner)
