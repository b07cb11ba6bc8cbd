"""Simulation throughput with the real models: conversations per minute per arm, batched vs not.

Each arm (hybrid, pure_llm) runs alone on a fresh database, once with LLM calls batched across
conversations (``RoundBatcher``, batch 32, 64 conversations in flight: what ``salesbot
simulate`` does) and once unbatched (each call its own forward pass; 4 conversations in flight
so that the scripted parts still overlap). Besides conversations per minute it reports LLM
drafts per minute, which does not depend on how many drafts the customers of each sample
happened to need. The model (SmolLM2-135M-Instruct through
transformers, fp32), the embedder (MiniLM) and the classifier are loaded once and shared.

    python benchmarks/simulation_throughput.py --n-batched 64 --n-unbatched 8

Run it with ``OMP_WAIT_POLICY=PASSIVE`` in the environment, as ``salesbot simulate`` sets it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from simulation_common import BROADBAND, machine, simulation

from engine.engine import Engine
from engine.llm import create_backend
from engine.simulation.backends import CACHE_MB_PER_CONVERSATION
from engine.simulation.batching import simulation_backend
from storage import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-batched", type=int, default=64)
    parser.add_argument("--n-unbatched", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--arms", default="hybrid,pure_llm")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    # the KV-cache budget ``salesbot simulate`` gives the conversations in flight
    inner = create_backend(
        "transformers", cache_mb=max(512, CACHE_MB_PER_CONVERSATION * 2 * args.batch)
    )
    started = time.perf_counter()
    base = Engine.from_flow_dir(BROADBAND, "sqlite://", backend=simulation_backend(inner, 1))
    inner.load()
    print(f"models loaded in {time.perf_counter() - started:.1f} s")
    folder = Path(tempfile.mkdtemp(prefix="salesbot-throughput-"))
    rows = []
    for arm in args.arms.split(","):
        measured = {}
        for label, batch, n, concurrency in (
            ("batched", args.batch, args.n_batched, 2 * args.batch),
            ("unbatched", 1, args.n_unbatched, 4),
        ):
            backend = simulation_backend(inner, batch)
            store = Store(f"sqlite:///{folder / f'{arm}-{label}.db'}")
            engine = Engine(
                flow=base.flow, classifier=base.classifier, backend=backend,
                compliance=base.compliance, store=store, experiments=base.experiments,
            )  # fmt: skip
            sim = simulation(engine, arm, n, args.seed, concurrency=concurrency)
            result = sim.run()
            stats = backend.stats
            per_minute = 60 * result.new / result.seconds
            drafts = 60 * stats.requests / result.seconds
            measured[label] = (per_minute, drafts)
            rows.append(
                f"| {arm} | {label} | {result.new} | {stats.requests} | {result.seconds:.0f} | "
                f"{per_minute:.1f} | {drafts:.1f} | {stats.mean_size:.1f} |"
            )
            print(rows[-1], flush=True)
            backend.close()
        (conv_b, drafts_b), (conv_u, drafts_u) = measured["batched"], measured["unbatched"]
        rows.append(
            f"| {arm} | ratio | | | | {conv_b / conv_u:.1f}x | {drafts_b / drafts_u:.1f}x | |"
        )
        print(rows[-1], flush=True)
    print(
        "\n| arm | LLM calls | conversations | drafts | seconds | conversations/min "
        "| drafts/min | mean batch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
