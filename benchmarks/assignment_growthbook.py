"""Does salesbot's assignment hash agree with GrowthBook's on ids outside ASCII?

Draws random (seed, unit id) pairs from a seeded RNG, built from ASCII, accented Latin,
combining marks, CJK, Hangul and astral-plane characters (emoji, ZWJ sequences, mathematical
letters, CJK Ext. B), and compares ``gb_hash`` and the 50/50 arm with the ``growthbook`` Python
SDK (``pip install growthbook``). Prints the number of mismatches (expected: 0).

    PYTHONPATH=. python benchmarks/assignment_growthbook.py --n 100000
"""

from __future__ import annotations

import argparse
import random

from growthbook.core import chooseVariation, gbhash, getBucketRanges

from engine.experiments import arm_for_bucket, bucket_of

POOLS = [
    [chr(c) for c in range(0x20, 0x7F)],
    list("éñøßçÅÆœ"),
    [chr(c) for c in range(0x0300, 0x0370)],
    [chr(c) for c in range(0x4E00, 0xA000)],
    [chr(c) for c in range(0xAC00, 0xD7A4)],
    [chr(c) for c in range(0x1F300, 0x1FAFF)] + ["\u200d", "\ufe0f"],
    [chr(c) for c in range(0x1D400, 0x1D800)] + [chr(c) for c in range(0x20000, 0x2A6E0)],
]
WEIGHTS = [("hybrid", 0.5), ("pure_llm", 0.5)]


def text(rng: random.Random) -> str:
    return "".join(rng.choice(rng.choice(POOLS)) for _ in range(rng.randint(0, 24)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ranges = getBucketRanges(len(WEIGHTS), 1, [w for _, w in WEIGHTS])
    hashes = arms = astral = 0
    examples: list[tuple[str, str, float, float]] = []
    for _ in range(args.n):
        seed, unit = text(rng), text(rng)
        astral += any(ord(c) > 0xFFFF for c in seed + unit)
        expected = gbhash(seed, unit, 2)
        bucket = bucket_of(seed, unit)
        if bucket / 10_000 != expected:
            hashes += 1
            if len(examples) < 5:
                examples.append((seed, unit, bucket / 10_000, expected))
        ours = [name for name, _ in WEIGHTS].index(arm_for_bucket(bucket, WEIGHTS))
        arms += ours != chooseVariation(expected, ranges)
    print(f"pairs: {args.n:,} (with astral-plane characters: {astral:,})")
    print(f"hash mismatches: {hashes}")
    print(f"50/50 arm mismatches: {arms}")
    for seed, unit, ours, theirs in examples:
        print(f"  {ascii(seed)} {ascii(unit)}: salesbot {ours} growthbook {theirs}")


if __name__ == "__main__":
    main()
