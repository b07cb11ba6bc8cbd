"""Deterministic arm assignment: the same unit always lands in the same arm, on any machine.

The hash is GrowthBook's version 2 scheme, so an assignment can be reproduced with any GrowthBook
SDK: ``n = fnv1a32(str(fnv1a32(seed + unit_id)))``, bucket ``n % 10000``. FNV-1a runs over the
string's UTF-16 code units (as GrowthBook's SDKs do), never over Python's salted ``hash()``. Arms
own contiguous bucket ranges in declaration order, sized by their weights.

The record stored on the conversation (``conversations.assignment``) carries what is needed to
audit and report the assignment without the YAML at hand: the scheme tag, seed, hash version,
bucket, arm, mode, overrides and the experiment's design (control, weights, metric, funnel).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
HASH_VERSION = 2
BUCKETS = 10_000
# Kept at v2 when the hash moved from code points to UTF-16 code units (issue 18): the two agree
# on every string without characters beyond U+FFFF, and stored records are read, not re-derived.
SCHEME = "assign:v2"
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"  # native order, for array("H")


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's UTF-16 code units, like GrowthBook's ``hashFnv32a`` (the
    JS SDK's ``charCodeAt`` loop; the Python SDK from 4.0 encodes to UTF-16-LE): a character
    beyond U+FFFF (an emoji) counts as its two surrogates, not as one code point, so BMP-only
    strings hash as over code points and astral ones do not. ``surrogatepass`` keeps a lone
    surrogate as the one code unit it is, as in JS."""
    value = FNV_OFFSET
    for unit in array("H", text.encode(_UTF16, "surrogatepass")):
        value ^= unit
        value = (value * FNV_PRIME) & 0xFFFFFFFF
    return value


def bucket_of(seed: str, unit_id: str) -> int:
    """The unit's bucket in [0, 10000) for this seed (GrowthBook hash version 2)."""
    return fnv1a32(str(fnv1a32(seed + unit_id))) % BUCKETS


def gb_hash(seed: str, unit_id: str) -> float:
    """GrowthBook's ``hash(seed, value, 2)``: the bucket as a fraction in [0, 1)."""
    return bucket_of(seed, unit_id) / BUCKETS


def bucket_ranges(weights: Sequence[tuple[str, float]]) -> list[tuple[str, int, int]]:
    """Each arm's half-open bucket range. Boundaries are rounded cumulative weights, so the
    ranges tile [0, 10000) exactly whatever floating-point error the weights carry."""
    ranges: list[tuple[str, int, int]] = []
    cumulative, start = 0.0, 0
    for i, (name, weight) in enumerate(weights):
        cumulative += weight
        end = BUCKETS if i == len(weights) - 1 else round(cumulative * BUCKETS)
        ranges.append((name, start, end))
        start = end
    return ranges


def arm_for_bucket(bucket: int, weights: Sequence[tuple[str, float]]) -> str:
    for name, start, end in bucket_ranges(weights):
        if start <= bucket < end:
            return name
    raise ValueError(f"bucket {bucket} is outside [0, {BUCKETS})")


@dataclass(frozen=True)
class Assignment:
    """One unit's arm in one experiment, as stored once per session."""

    experiment: str
    arm: str
    mode: str  # hybrid | pure_llm: what the engine's policy runs
    seed: str
    unit: str  # customer_id | session
    bucket: int
    forced: bool = False  # the caller chose the arm (paired simulation), the hash did not
    overrides: Mapping[str, Any] = field(default_factory=dict)
    design: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON stored in ``conversations.assignment``."""
        return {
            "scheme": SCHEME,
            "experiment": self.experiment,
            "arm": self.arm,
            "mode": self.mode,
            "seed": self.seed,
            "hash_version": HASH_VERSION,
            "hash": "fnv1a32",
            "buckets": BUCKETS,
            "unit": self.unit,
            "bucket": self.bucket,
            "forced": self.forced,
            "overrides": dict(self.overrides),
            "design": dict(self.design),
        }
