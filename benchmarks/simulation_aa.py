"""A/A validation: two identical hybrid arms must differ "significantly" in about 5% of runs.

One simulation runs ``replications x block`` customers in arms ``a=hybrid`` and ``b=hybrid``
(each customer in both, paired), through the real Engine and the broadband flow. Customers are
independent draws (their Generators are seeded by (seed, index)), so consecutive blocks of
``block`` customers are independent replications of an A/A experiment of that size. In each
block the primary metric (close rate) of b is compared with a's by McNemar's test, as
``salesbot simulate`` reports it (mid-p; the exact binomial and the continuity-corrected
chi-square tests are counted beside it); the share of blocks with p < 0.05 is the
false-positive rate.

For speed the LLM is the ``script-sampler`` stand-in (no model; drafts keyed by session, so the
two arms' drafts are independent, as from a sampling LLM) and the compliance embedder is
tf-idf over characters. The arms' outcomes differ only through that randomness and the sticky
fallback variants, exactly the noise an A/A test must not mistake for an effect.

    python benchmarks/simulation_aa.py --replications 200 --block 80
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

from simulation_common import build, machine, simulation

from engine.report.stats import mcnemar_paired, two_proportion_test, wilson
from engine.simulation.results import run_conversations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=200)
    parser.add_argument("--block", type=int, default=80, help="customers per replication")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", default="sqlite:////tmp/salesbot-aa.db")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    engine = build(args.db)
    n = args.replications * args.block
    sim = simulation(engine, "a=hybrid,b=hybrid", n, args.seed)
    started = time.perf_counter()
    result = sim.run()
    seconds = time.perf_counter() - started
    print(
        f"{result.done} conversations ({result.new} new) in {seconds:.0f} s "
        f"({result.per_second * 60:.0f} conversations/min); run {result.run_id}"
    )

    success = set(sim.experiment.success_outcomes)
    by_index: dict[int, dict[str, bool]] = defaultdict(dict)
    for c in run_conversations(engine.store, result.run_id):
        index = int(c.customer_id.rsplit("-", 1)[1])
        by_index[index][c.arm] = c.outcome in success
    rejections = {"mcnemar": 0, "mcnemar_exact": 0, "mcnemar_chi2": 0, "unpaired_z": 0}
    discordant, rates = [], []
    for r in range(args.replications):
        rows = [by_index[i] for i in range(r * args.block, (r + 1) * args.block)]
        a, b = [x["a"] for x in rows], [x["b"] for x in rows]
        paired = mcnemar_paired(a, b)
        chi2 = mcnemar_paired(a, b, method="chi2")
        exact = mcnemar_paired(a, b, method="exact")
        discordant.append(paired.only_a + paired.only_b)
        rates.append(paired.rate_a)
        rejections["mcnemar"] += paired.p_value < args.alpha
        rejections["mcnemar_chi2"] += chi2.p_value < args.alpha
        rejections["mcnemar_exact"] += exact.p_value < args.alpha
        p_z = two_proportion_test(sum(b), len(b), sum(a), len(a))
        rejections["unpaired_z"] += p_z < args.alpha
    reps = args.replications
    print(
        f"\n{reps} A/A replications of {args.block} customers per arm; close rate in arm a: "
        f"mean {100 * sum(rates) / reps:.1f}%; discordant pairs per replication: mean "
        f"{sum(discordant) / reps:.1f}, min {min(discordant)}, max {max(discordant)}\n"
    )
    print("| test (alpha = 0.05) | false positives | rate | 95% Wilson interval |")
    print("|---|---|---|---|")
    labels = {
        "mcnemar": "McNemar mid-p, as reported",
        "mcnemar_exact": "McNemar exact (binomial)",
        "mcnemar_chi2": "McNemar chi-square with continuity correction",
        "unpaired_z": "unpaired two-proportion z-test (the report's)",
    }
    for key, label in labels.items():
        count = rejections[key]
        ci = wilson(count, reps)
        print(
            f"| {label} | {count}/{reps} | {100 * count / reps:.1f}% | "
            f"{100 * ci.low:.1f}-{100 * ci.high:.1f}% |"
        )
    se = math.sqrt(args.alpha * (1 - args.alpha) / reps)
    print(f"\n(one standard error of a {args.alpha:.0%} rate over {reps} runs: {100 * se:.1f} pts)")


if __name__ == "__main__":
    main()
