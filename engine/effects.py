"""What a script does to a call, and when it may be said (scripts.yaml: ends, sets, requires, once).

A script is approved text, but approved text can still be wrong for the moment: "that's all
confirmed" before any security answer, a goodbye while the call goes on, the same last ask twice.
So scripts carry their consequences, and whichever path sends one (a scripted stage, an LLM stage
of the hybrid arm, the pure_llm arm) the engine applies them the same way:

- ``requires: [flag]``: the script is a candidate for the compliance filter only once every flag
  holds (flags are set by scripts' ``sets`` and by the ruler's milestones, engine/milestones.py);
- ``once: true``: not a candidate again once it was said in the call;
- ``sets: [flag]``: the flags hold from the moment it is sent;
- ``ends: outcome``: sending it ends the call with that outcome; nothing is said after it.

Pure functions over (flags, scripts said); the state itself lives in
:class:`engine.milestones.Progress`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from engine.flow.model import Flow, Script


def missing(script: Script, flags: Iterable[str]) -> tuple[str, ...]:
    """The flags ``script`` requires that do not hold (empty: its precondition holds)."""
    held = set(flags)
    return tuple(flag for flag in script.requires if flag not in held)


def may_say(script: Script, flags: Iterable[str], said: Iterable[str]) -> bool:
    """Whether ``script`` is a candidate now: its preconditions hold and, if it may be said only
    once, it was not said yet."""
    if script.once and script.id in set(said):
        return False
    return not missing(script, flags)


def available(
    flow: Flow, candidates: Sequence[str], flags: Iterable[str], said: Iterable[str]
) -> tuple[str, ...]:
    """The ``candidates`` that may be said now, order kept."""
    held, done = frozenset(flags), frozenset(said)
    return tuple(c for c in candidates if may_say(flow.scripts[c], held, done))


def apply(script: Script, flags: Iterable[str], said: Iterable[str]) -> tuple[frozenset, frozenset]:
    """(flags, scripts said) after sending ``script``."""
    return frozenset(flags) | frozenset(script.sets), frozenset(said) | {script.id}
