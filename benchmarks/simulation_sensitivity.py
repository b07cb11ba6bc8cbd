"""How the gap between arms moves when the simulated customers change.

For each setting, every persona of ``flows/broadband_en/personas.yaml`` gets one number changed
(``Population.adjusted``), and the same N customers (same seed) run through hybrid and pure_llm;
the table shows both close rates, the gap, McNemar's p and the hang-up rates. A comparison that
only holds for one guess of the customer mix is fragile; this table shows how far the guess can
move before the conclusion does.

The LLM is the ``script-sampler`` stand-in and the embedder tf-idf over characters, for speed
(say so when quoting); ``--backend transformers --embedder minilm`` runs the real models.

    python benchmarks/simulation_sensitivity.py --n 300
"""

from __future__ import annotations

import argparse
import time

from simulation_common import build, machine, simulation

from engine.simulation import load_population
from engine.simulation.results import paired_comparisons, rate, run_conversations

SETTINGS: list[tuple[str, dict, dict]] = [
    ("as written", {}, {}),
    ("patience x 0.5", {}, {"patience": 0.5}),
    ("patience x 0.8", {}, {"patience": 0.8}),
    ("patience = 1 (never hangs up)", {"patience": 1.0}, {}),
    ("interest x 0.5", {}, {"interest": 0.5}),
    ("interest x 1.5", {}, {"interest": 1.5}),
    ("off_topic = 0", {"off_topic": 0.0}, {}),
    ("off_topic = 0.3", {"off_topic": 0.3}, {}),
    ("noise = 0.3", {"noise": 0.3}, {}),
    ("bot_aversion = 0", {"bot_aversion": 0.0}, {}),
    ("bot_aversion = 0.6", {"bot_aversion": 0.6}, {}),
    ("identity_cooperation = 1", {"identity_cooperation": 1.0}, {}),
    ("no objections", {"objections": {}}, {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="customers per setting (x 2 arms)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--db", default="sqlite:////tmp/salesbot-sensitivity.db")
    parser.add_argument("--backend", default="script-sampler")
    parser.add_argument("--embedder", default="tfidf-char")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    engine = build(args.db, backend=args.backend, embedder=args.embedder)
    base = load_population(engine.flow)
    rows = []
    started = time.perf_counter()
    for label, set_to, scale in SETTINGS:
        population = base.adjusted(set_to=set_to, scale=scale)
        sim = simulation(engine, "hybrid,pure_llm", args.n, args.seed, population=population)
        result = sim.run()
        conversations = run_conversations(engine.store, result.run_id)
        (paired,) = paired_comparisons(conversations, sim.experiment, ["hybrid", "pure_llm"])
        t = paired.test
        rows.append(
            f"| {label} | {100 * t.rate_a:.1f}% | {100 * t.rate_b:.1f}% | "
            f"{100 * (t.rate_b - t.rate_a):+.1f} | {t.p_value:.2g} | "
            f"{100 * rate(conversations, 'hybrid', 'hung_up'):.1f}% | "
            f"{100 * rate(conversations, 'pure_llm', 'hung_up'):.1f}% |"
        )
        print(rows[-1], flush=True)
    print(f"\n{len(SETTINGS)} settings x {args.n} customers x 2 arms in "
          f"{time.perf_counter() - started:.0f} s; backend {args.backend}, embedder "
          f"{args.embedder}\n")  # fmt: skip
    print("| personas | hybrid close | pure_llm close | gap (pts) | McNemar p | hybrid hung up"
          " | pure_llm hung up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
