"""Hard rules: checks on the raw draft that run before any similarity matching.

A similarity score says "this draft is about the same thing as that script"; it cannot say "this
draft promises 20% off". Rules can. Two kinds:

- forbidden phrases and regular expressions from flow.yaml (any mode): a hit means the draft is
  heading somewhere the compliance team ruled out, so the turn falls back;
- in ``pass`` mode only (the raw text would reach the customer), every number, price or
  percentage in the draft must appear in some approved script of the stage. In ``strict`` mode
  the approved script is sent instead of the draft, so its numbers are approved by construction.

Phrases and patterns are compiled once (``lru_cache``): the loader has already checked that every
pattern compiles, so a failure here is a bug, not bad input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


@dataclass(frozen=True)
class RuleHit:
    """One broken rule, as stored in the audit row's ``rule_hits`` JSON."""

    rule: str  # phrase | pattern | number
    value: str  # the phrase, the pattern source, or the normalised number ("price:20")
    match: str  # the text of the draft that broke it

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "value": self.value, "match": self.match}


def normalise(text: str) -> str:
    """Curly quotes to straight ones, so "can’t" and "can't" are the same to every rule."""
    return text.translate(_QUOTES)


@lru_cache(maxsize=4096)
def phrase_regex(phrase: str) -> re.Pattern[str]:
    """Whole words, any case, any run of whitespace between words."""
    words = normalise(phrase).split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.I)


@lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.I)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None (for load-time validation)."""
    try:
        compiled = re.compile(pattern, re.I)
    except re.error as exc:
        return f"invalid regular expression: {exc}"
    if compiled.search(""):
        return "the pattern matches the empty string, so it would reject every draft"
    return None


def forbidden_hits(text: str, phrases: Sequence[str], patterns: Sequence[str]) -> list[RuleHit]:
    text = normalise(text)
    hits = []
    for phrase in phrases:
        found = phrase_regex(phrase).search(text)
        if found:
            hits.append(RuleHit("phrase", phrase, found.group(0)))
    for pattern in patterns:
        found = pattern_regex(pattern).search(text)
        if found:
            hits.append(RuleHit("pattern", pattern, found.group(0)))
    return hits


# ---------------------------------------------------------------- numbers, prices, percentages

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_WORD = "|".join(
    sorted([*_UNITS, *_TENS, "hundred", "thousand", "half", "double"], key=len, reverse=True)
)
_NUMBER = re.compile(
    r"""
    (?P<currency>[£$€])?\s?
    (?:
        (?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)
      | (?P<words>\b(?:WORDS)\b(?:[\s-]+(?:and\s+)?\b(?:WORDS)\b)*)
    )
    (?P<suffix>\s?(?:%|per\s?cent\b|percent\b|p\b|pence\b|pounds?\b|quid\b|dollars?\b|euros?\b))?
    """.replace("WORDS", _WORD),
    re.I | re.X,
)
_PRICE_SUFFIX = re.compile(r"pounds?|quid|dollars?|euros?", re.I)
_PENCE_SUFFIX = re.compile(r"p|pence", re.I)


def _words_value(words: str) -> float:
    """ "twenty-six" -> 26, "two hundred" -> 200, "half" -> 0.5."""
    total, current = 0, 0
    for word in re.split(r"[\s-]+", words.lower().strip()):
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word == "thousand":
            total += (current or 1) * 1000
            current = 0
        elif word == "half":
            return 0.5
        elif word == "double":
            return 2.0
    return float(total + current)


def numbers(text: str) -> dict[str, str]:
    """Numbers mentioned in ``text``: normalised ``kind:value`` -> the words that said it.

    Kinds are price, percent and plain: "£38" and "38 pounds" are both ``price:38``, "26p" is
    ``price:0.26``, "20 per cent" is ``percent:20``, "five times" is ``plain:5``.
    """
    found: dict[str, str] = {}
    for m in _NUMBER.finditer(normalise(text)):
        if m.group("digits"):
            value = float(m.group("digits").replace(",", ""))
        else:
            value = _words_value(m.group("words"))
        suffix = (m.group("suffix") or "").strip()
        kind = "plain"
        if m.group("currency") or _PRICE_SUFFIX.fullmatch(suffix):
            kind = "price"
        elif _PENCE_SUFFIX.fullmatch(suffix):
            kind, value = "price", value / 100
        elif suffix and ("%" in suffix or "cent" in suffix.lower()):
            kind = "percent"
        found.setdefault(f"{kind}:{value:g}", m.group(0).strip())
    return found


def allowed_numbers(texts: Iterable[str]) -> frozenset[str]:
    """Every number of the approved texts, each also allowed as a plain number ("£38" lets a
    draft say "38"), but a plain "38" in a script never licenses "£38" or "38%"."""
    allowed = set()
    for text in texts:
        for item in numbers(text):
            allowed.add(item)
            allowed.add("plain:" + item.split(":", 1)[1])
    return frozenset(allowed)


def number_hits(text: str, allowed: frozenset[str]) -> list[RuleHit]:
    return [
        RuleHit("number", item, said)
        for item, said in sorted(numbers(text).items())
        if item not in allowed
    ]
