"""Run simulated customers through the real Engine, every customer in every arm (paired).

- **One code path.** Each conversation is ``Engine.start`` then ``Engine.turn`` until the call
  ends (or ``Engine.end`` when the customer hangs up), exactly as live traffic, into the same
  tables; conversations carry the run's id (``conversations.run_id``) and the run's parameters
  are a ``simulation_runs`` row.
- **Paired.** Customer ``i`` is the same persona, with the same random numbers, in every arm:
  its Generator is seeded with ``(seed, i)`` and its customer id is the same.
- **Batched, reproducibly.** ``concurrency`` threads take conversations in order from one
  queue; the engine holds no lock while it waits for the LLM, so the simulation backend
  (:class:`engine.simulation.batching.RoundBatcher`) sends one batch when every thread is
  waiting for the LLM: which drafts share a forward pass depends on the conversations only,
  never on thread timing. Arms are interleaved so both fill the same batches.
- **Resumable.** The run id is a hash of everything that determines the results (flow version,
  personas and utterances, arms, n, seed, backend, embedder), and session ids derive from it, so
  running the same command again finds the interrupted run. A finished conversation is kept; an
  unfinished one is continued: the customer is rebuilt from its seed and replayed against the
  stored turns (it must say exactly what was stored), then the call goes on where it stopped.
  A resumed run stores what an uninterrupted run stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from engine.engine import Engine
from engine.experiments import Experiment
from engine.hashing import canonical_json, sha256_hex
from engine.simulation.batching import RoundBatcher
from engine.simulation.customer import SimulatedCustomer
from engine.simulation.design import Arm, SimulationError
from engine.simulation.personas import Population
from storage import runs

RUN_SCHEME = "simrun:v1:"
SESSION_SCHEME = "simsession:v1:"


def _digest(scheme: str, data: Any) -> str:
    """sha256 of the scheme followed by the canonical JSON (the tag is hashed, not prefixed)."""
    return sha256_hex(scheme + canonical_json(data))


def customer_id(seed: int, index: int) -> str:
    """The same simulated customer in every arm (the pairing key)."""
    return f"sim-{seed}-{index:06d}"


@dataclass(frozen=True)
class RunPlan:
    """Everything that determines a run's results; its hash is the run id."""

    flow_name: str
    flow_version: str
    population: str
    arms: tuple[Arm, ...]
    n: int
    seed: int
    backend: str
    embedder: str
    experiment: str
    definition: str

    def params(self) -> dict[str, Any]:
        return {
            "flow_version": self.flow_version,
            "population": self.population,
            "arms": [[a.label, a.mode] for a in self.arms],
            "n": self.n,
            "seed": self.seed,
            "backend": self.backend,
            "embedder": self.embedder,
            "experiment": self.experiment,
            "definition": self.definition,
        }

    @property
    def run_id(self) -> str:
        return "sim-" + _digest(RUN_SCHEME, self.params())[:20]

    def session_id(self, run_id: str, arm: Arm, index: int) -> str:
        return _digest(SESSION_SCHEME, [run_id, arm.label, index])[:32]


@dataclass
class RunResult:
    run_id: str
    total: int  # conversations planned (n x arms)
    done: int  # conversations finished, this call and earlier ones
    resumed: int  # conversations that were finished before this call
    continued: int  # unfinished conversations picked up mid-call
    interrupted: bool
    seconds: float
    new: int = 0  # conversations finished by this call

    @property
    def per_second(self) -> float:
        return self.new / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Simulation:
    """A planned run over an Engine; :meth:`run` executes (or resumes) it."""

    engine: Engine
    population: Population
    experiment: Experiment
    arms: Sequence[Arm]
    n: int
    seed: int
    concurrency: int = 32
    run_id: str | None = None
    plan: RunPlan = field(init=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SimulationError("n must be at least 1")
        if self.seed < 0:
            raise SimulationError("seed must be a non-negative integer")
        if self.concurrency < 1:
            raise SimulationError("concurrency must be at least 1")
        flow = self.engine.flow
        self.plan = RunPlan(
            flow_name=flow.name,
            flow_version=flow.version,
            population=self.population.version,
            arms=tuple(self.arms),
            n=self.n,
            seed=self.seed,
            backend=self.engine.backend.name,
            embedder=self.engine.compliance.embedder_name,
            experiment=self.experiment.name,
            definition=self.experiment.definition,
        )
        self.run_id = self.run_id or self.plan.run_id
        self._act = {sid: script.act for sid, script in flow.scripts.items()}

    # -- the run --------------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> RunResult:
        """Run every (customer, arm) conversation not finished yet.

        ``on_progress(done, total)`` is called as conversations finish. Setting ``stop`` (or a
        KeyboardInterrupt) lets in-flight conversations finish their current turn and leaves
        the run resumable; the result says ``interrupted``.
        """
        stop = stop or threading.Event()
        started = time.perf_counter()
        run_id = self._open_run()
        status = runs.conversation_status(self.engine.store, run_id)
        tasks = [(i, arm) for i in range(self.n) for arm in self.arms]
        total = len(tasks)
        finished_before = sum(1 for s in status.values() if s != "active")
        continued = sum(1 for s in status.values() if s == "active")
        done = finished_before
        lock = threading.Lock()
        if on_progress:
            on_progress(done, total)

        def finished() -> None:
            nonlocal done
            with lock:
                done += 1
                count = done
            if on_progress:
                on_progress(count, total)

        todo = [
            (i, arm)
            for i, arm in tasks
            if status.get(self.plan.session_id(run_id, arm, i)) in (None, "active")
        ]
        queue = iter(todo)
        queue_lock = threading.Lock()

        def member() -> None:
            """One thread: conversations from the shared queue until it is empty."""
            try:
                while not stop.is_set():
                    with queue_lock:
                        task = next(queue, None)
                    if task is None:
                        return
                    if self._converse(run_id, *task, status, stop):
                        finished()
            finally:
                if rounds is not None:
                    rounds.leave()  # the LLM rounds stop waiting for this thread

        threads = min(self.concurrency, len(todo))
        backend = self.engine.backend
        rounds = backend if isinstance(backend, RoundBatcher) else None
        with (
            rounds.members(threads) if rounds is not None else nullcontext(),
            ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="sim") as pool,
        ):
            futures = [pool.submit(member) for _ in range(threads)]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future.done() and not future.cancelled() and future.exception():
                        raise future.exception()  # type: ignore[misc]
            except BaseException:  # a failed conversation, or Ctrl-C: stop cleanly, resumable
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                runs.close_run(self.engine.store, run_id, "interrupted")
                raise
        interrupted = stop.is_set() and done < total
        runs.close_run(self.engine.store, run_id, "interrupted" if interrupted else "finished")
        return RunResult(
            run_id=run_id,
            total=total,
            done=done,
            resumed=finished_before,
            continued=continued,
            interrupted=interrupted,
            seconds=time.perf_counter() - started,
            new=done - finished_before,
        )

    # -- one conversation ------------------------------------------------------------------------

    def _converse(
        self, run_id: str, index: int, arm: Arm, status: Mapping[str, str], stop: threading.Event
    ) -> bool:
        """Run (or continue) one conversation; True when it ended, False when stopped."""
        if stop.is_set():
            return False
        engine = self.engine
        person = SimulatedCustomer(self.population, self.seed, index)
        session_id = self.plan.session_id(run_id, arm, index)
        if status.get(session_id) == "active":
            act, turn_index = self._replay(session_id, person)
        else:
            customer = customer_id(self.seed, index)
            unit = session_id if self.experiment.unit == "session" else customer
            record = self.experiment.assign(unit, arm=arm.label).record()
            record["simulation"] = {
                "run_id": run_id,
                "index": index,
                "seed": self.seed,
                "persona": person.persona_name,
            }
            reply = engine.start(
                customer,
                person.slots,
                arm=arm.label,
                session_id=session_id,
                experiment=self.experiment.name,
                assignment=record,
                run_id=run_id,
            )
            if reply.ended:
                return True
            act, turn_index = self._act.get(reply.script_id or ""), 0
        while True:
            if stop.is_set():
                return False
            said = person.respond(act)
            if said is None:
                engine.end(session_id, "hangup")
                return True
            turn_index += 1
            reply = engine.turn(session_id, said.text, idempotency_key=f"sim-{turn_index}")
            if reply.ended:
                return True
            act = self._act.get(reply.script_id or "")

    def _replay(self, session_id: str, customer: SimulatedCustomer) -> tuple[str | None, int]:
        """Bring a fresh customer to where an interrupted conversation stopped."""
        turns = self.engine.store.turns(session_id)
        act = self._act.get(turns[0].script_id or "")
        for turn in turns[1:]:
            said = customer.respond(act)
            if said is None or said.text != turn.user_text:
                raise SimulationError(
                    f"cannot resume conversation {session_id}: at turn {turn.turn_index} the "
                    f"simulated customer says {said.text if said else '(hangs up)'!r} but the "
                    f"stored turn says {turn.user_text!r}; the code or files changed since the "
                    "run started. Start a new run (--run-id NAME)."
                )
            act = self._act.get(turn.script_id or "")
        return act, turns[-1].turn_index

    # -- the simulation_runs row -------------------------------------------------------------

    def _open_run(self) -> str:
        run_id = self.run_id
        assert run_id is not None
        changed = runs.open_run(
            self.engine.store,
            run_id,
            flow_name=self.plan.flow_name,
            flow_version=self.plan.flow_version,
            params=self.plan.params(),
        )
        if changed:
            raise SimulationError(
                f"run {run_id!r} already exists with different {', '.join(changed)}; "
                "choose another --run-id"
            )
        return run_id
