"""Map an LLM draft to the nearest approved script, or fall back.

Order of a decision: hard rules first (forbidden phrases and patterns; in pass mode also numbers
that no approved script of the stage contains), then the nearest eligible script by exact cosine
over every approved wording, then the stage's threshold, then its top-two margin. In strict mode
(the default) the customer hears the approved script, never the draft. In pass mode the draft
itself is sent when it passes all of that.

The margin is measured against the best script with a *different act*: two pitch scripts that
both say "it's £38 a month" are interchangeable, but a draft halfway between "here is the price"
and "you can cancel within 14 days" is ambiguous about what the bot is doing, and falls back.

The fallback wording is drawn per session from the stage's weighted pool with a hash of
(session, stage), so it is sticky for the whole call and reproducible in an A/B analysis.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.compliance.embedders import Embedder
from engine.compliance.index import IndexEntry, ScriptIndex, as_vector
from engine.compliance.rules import (
    RuleHit,
    allowed_numbers,
    forbidden_hits,
    number_hits,
)
from engine.flow.model import CompliancePolicy, Flow

TOP_K = 3
VARIANT_SCHEME = "fallback:v1:"
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
# Why a turn fell back when the script it was to send, rendered with the session's slot values,
# broke a hard rule (the draft, if any, was fine).
RENDERED_RULE = "rendered_rule"


@dataclass(frozen=True)
class Match:
    """What the matcher found for one draft, before any threshold is applied."""

    text: str
    top_k: tuple[tuple[str, float], ...]
    margin: float | None  # best score minus the best score of another act; None: no rival
    rule_hits: tuple[RuleHit, ...]
    embed_ms: float
    match_ms: float
    # With ``allowed`` (see ComplianceFilter.match): the best script ignoring that restriction,
    # so a caller can tell a draft aimed at a script it may not say yet.
    nearest: tuple[str, float] | None = None

    @property
    def score(self) -> float | None:
        return self.top_k[0][1] if self.top_k else None

    def verdict(self, threshold: float, margin: float) -> str:
        """``ok`` or why the draft cannot be used: empty | rule | below_threshold | ambiguous."""
        if not self.top_k:
            return "empty"
        if self.rule_hits:
            return "rule"
        if self.top_k[0][1] < threshold:
            return "below_threshold"
        if self.margin is not None and self.margin < margin:
            return "ambiguous"
        return "ok"

    def accepted(self, policy: CompliancePolicy) -> str | None:
        """The script this draft would be mapped to, or None when it would fall back."""
        ok = self.verdict(policy.threshold, policy.margin) == "ok"
        return self.top_k[0][0] if ok else None


@dataclass(frozen=True)
class ComplianceResult:
    decision: str  # approved | pass | fallback | universal
    script_id: str | None  # the script sent (in pass mode: the script the draft matched)
    text: str  # what the customer hears
    score: float | None  # best similarity among eligible candidates
    threshold: float
    top_k: tuple[tuple[str, float], ...]
    variant: str | None  # the fallback script chosen, when a fallback was sent
    embed_ms: float
    match_ms: float
    rule_hits: tuple[RuleHit, ...] = ()
    margin: float | None = None
    reason: str = "ok"  # ok | empty | rule | below_threshold | ambiguous | rendered_rule

    @property
    def source(self) -> str:
        return {"approved": "llm", "pass": "llm"}.get(self.decision, self.decision)

    def audit_top_k(self) -> dict:
        """The ``top_k`` JSON of the audit row."""
        return {
            "ids": [i for i, _ in self.top_k],
            "scores": [s for _, s in self.top_k],
            "margin": self.margin,
            "reason": self.reason,
        }


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def pick_variant(pool: tuple[tuple[str, float], ...], session_key: str, stage: str) -> str:
    """Weighted choice from ``pool`` driven by sha256(session, stage): sticky and reproducible."""
    digest = hashlib.sha256(f"{VARIANT_SCHEME}{session_key}:{stage}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for script_id, weight in pool:
        cumulative += weight
        if point < cumulative:
            return script_id
    return pool[-1][0]


class ComplianceFilter:
    """Indexes the script library once per flow (cached on disk) and decides per draft."""

    def __init__(
        self,
        flow: Flow,
        embedder: Embedder,
        *,
        cache_dir: Path | None = None,
        use_cache: bool = True,
    ):
        self.flow = flow
        self.embedder = embedder
        defaults = {k: v for k, v in flow.slot_defaults.items() if v is not None}
        entries = [
            IndexEntry(
                script.id,
                script.act,
                tuple(self._index_text(t, defaults) for t in (script.text, *script.wordings)),
            )
            for script in flow.scripts.values()
        ]
        self.index = ScriptIndex.build(
            entries,
            embedder,
            library_hash=flow.library_hash,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
        self._lock = threading.Lock()
        self._masks: dict[tuple[tuple[str, ...], frozenset[str]], np.ndarray] = {}
        self._numbers: dict[tuple, frozenset[str]] = {}
        for stage in flow.stages.values():
            if stage.compliance is not None:
                self.index.view(stage.compliance.candidates)
        if flow.pure_llm is not None:
            self.index.view(flow.pure_llm.candidates)

    @staticmethod
    def _index_text(text: str, defaults: Mapping[str, str]) -> str:
        """Placeholders read as the flow's default value, else as their slot name
        ("{current_plan}" -> "100 Mbps", "{customer_name}" -> "customer name")."""
        return _PLACEHOLDER.sub(
            lambda m: defaults.get(m.group(1)) or m.group(1).replace("_", " "), text
        )

    @property
    def embedder_name(self) -> str:
        return self.embedder.name

    @property
    def index_key(self) -> str:
        return self.index.key

    def eligible(self, policy: CompliancePolicy, slots: Mapping[str, str | None]) -> list[str]:
        """Candidates whose placeholders can all be filled from the session's known slots."""
        known = {k for k, v in slots.items() if v is not None}
        return [c for c in policy.candidates if self.flow.scripts[c].slots <= known]

    def candidate_texts(
        self, policy: CompliancePolicy, slots: Mapping[str, str | None]
    ) -> tuple[str, ...]:
        """The eligible candidates' texts rendered with the session's slots: what constrained
        decoding may produce (each then scores 1.0 against its own script)."""
        filled = {k: v for k, v in slots.items() if v is not None}
        texts = (self.flow.render(c, filled) for c in self.eligible(policy, slots))
        return tuple(dict.fromkeys(texts))

    def eligible_mask(
        self, policy: CompliancePolicy, slots: Mapping[str, str | None]
    ) -> np.ndarray:
        """``eligible`` as a boolean mask over ``policy.candidates``, cached per slot set."""
        known = frozenset(k for k, v in slots.items() if v is not None)
        key = (policy.candidates, known)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.array(
                [self.flow.scripts[c].slots <= known for c in policy.candidates], dtype=bool
            )
            with self._lock:
                if len(self._masks) > 4096:
                    self._masks.clear()
                self._masks[key] = mask
        return mask

    def rule_hits(
        self, raw_text: str, policy: CompliancePolicy, slots: Mapping[str, str]
    ) -> list[RuleHit]:
        hits = forbidden_hits(raw_text, policy.forbidden_phrases, policy.forbidden_patterns)
        if policy.mode == "pass":
            hits += number_hits(raw_text, self._allowed_numbers(policy, slots))
        return hits

    def _allowed_numbers(
        self, policy: CompliancePolicy, slots: Mapping[str, str]
    ) -> frozenset[str]:
        sendable = (*policy.candidates, *(s for s, _ in policy.fallback), policy.universal_fallback)
        values = tuple(sorted((k, str(v)) for k, v in slots.items() if v is not None))
        key = (sendable, values)
        allowed = self._numbers.get(key)
        if allowed is None:
            filled = dict(values)
            scripts = [self.flow.scripts[script_id] for script_id in sendable]
            texts = [
                _PLACEHOLDER.sub(lambda m: filled.get(m.group(1), ""), text)
                for script in scripts
                for text in (script.text, *script.wordings)
            ]
            allowed = allowed_numbers(texts)
            with self._lock:
                if len(self._numbers) > 1024:
                    self._numbers.clear()
                self._numbers[key] = allowed
        return allowed

    def embed(self, text: str) -> np.ndarray:
        """The normalised embedding of one draft, as the index compares it."""
        return as_vector(self.embedder.embed_batch([text])[0])

    def match(
        self,
        raw_text: str,
        policy: CompliancePolicy,
        slots: Mapping[str, str],
        allowed: Collection[str] | None = None,
    ) -> Match:
        """Embed the draft and find its nearest eligible scripts; check the hard rules.

        ``allowed``: only these candidates may be matched (scripts whose preconditions hold now);
        the best over all fillable candidates is then reported too, as ``Match.nearest``.
        """
        started = time.perf_counter()
        fillable = self.eligible_mask(policy, slots)
        mask = fillable
        if allowed is not None:
            mask = fillable & np.array([c in allowed for c in policy.candidates], dtype=bool)
        if not raw_text.strip() or not mask.any():
            return Match(raw_text, (), None, (), 0.0, (time.perf_counter() - started) * 1000)
        hits = tuple(self.rule_hits(raw_text, policy, slots))
        verbatim = None if hits else self._verbatim(raw_text, policy, slots, mask)
        if verbatim is not None:  # word for word an eligible script: its own nearest, at 1.0
            exact = ((verbatim, 1.0),)
            return Match(
                raw_text,
                exact,
                None,  # no rival: the draft is this script, not something near it
                hits,
                embed_ms=0.0,
                match_ms=(time.perf_counter() - started) * 1000,
                nearest=exact[0] if allowed is not None else None,
            )
        vector = self.embed(raw_text)
        embedded = time.perf_counter()
        view = self.index.view(policy.candidates)
        top, margin = view.top(vector, mask, TOP_K)
        nearest = view.top(vector, fillable, 1)[0] if allowed is not None else []
        done = time.perf_counter()
        return Match(
            raw_text,
            tuple(top),
            margin,
            hits,
            embed_ms=(embedded - started) * 1000,
            match_ms=(done - embedded) * 1000,
            nearest=nearest[0] if nearest else None,
        )

    def _verbatim(
        self, raw_text: str, policy: CompliancePolicy, slots: Mapping[str, str], mask: np.ndarray
    ) -> str | None:
        """The candidate allowed by ``mask`` whose text, filled with ``slots``, is exactly the
        draft (as constrained decoding drafts), else None. Embedding such a draft would only
        find the same script at similarity ~1.0, at ~35 ms a draft on two cores."""
        text = raw_text.strip()
        filled = {k: v for k, v in slots.items() if v is not None}
        for candidate, ok in zip(policy.candidates, mask, strict=True):
            if ok and self.flow.render(candidate, filled) == text:
                return candidate
        return None

    def decide(
        self,
        match: Match,
        stage: str,
        policy: CompliancePolicy,
        session_key: str,
        slots: Mapping[str, str],
    ) -> ComplianceResult:
        """Turn a match into what the customer hears."""
        reason = match.verdict(policy.threshold, policy.margin)
        variant, hits = None, match.rule_hits
        if reason == "ok":
            script_id = match.top_k[0][0]
            if policy.mode == "pass":
                decision, text = "pass", match.text.strip()
            else:
                decision, text = "approved", self.flow.render(script_id, dict(slots))
                broken = self.rendered_hits(text, policy)
                if broken:  # the approved script, filled with this session's slots, breaks one
                    reason, hits = RENDERED_RULE, (*hits, *broken)
        if reason != "ok":
            decision, script_id, variant, text, broken = self._fallback(
                stage, policy, session_key, slots
            )
            hits = (*hits, *broken)
        return ComplianceResult(
            decision=decision,
            script_id=script_id,
            text=text,
            score=match.score,
            threshold=policy.threshold,
            top_k=match.top_k,
            variant=variant,
            embed_ms=match.embed_ms,
            match_ms=match.match_ms,
            rule_hits=hits,
            margin=match.margin,
            reason=reason,
        )

    def check(
        self,
        raw_text: str,
        stage: str,
        policy: CompliancePolicy,
        session_key: str,
        slots: Mapping[str, str],
    ) -> ComplianceResult:
        return self.decide(self.match(raw_text, policy, slots), stage, policy, session_key, slots)

    def rendered_hits(self, text: str, policy: CompliancePolicy | None) -> list[RuleHit]:
        """The hard rules a reply about to be sent breaks: a script's text is approved, but the
        slot values filled into it are not, so the rendered text is checked again (the stage's
        rules; the flow's where the stage has no policy, as end stages)."""
        if policy is None:
            phrases, patterns = self.flow.forbidden_phrases, self.flow.forbidden_patterns
        else:
            phrases, patterns = policy.forbidden_phrases, policy.forbidden_patterns
        return forbidden_hits(text, phrases, patterns)

    def screen_script(
        self,
        text: str,
        stage: str,
        policy: CompliancePolicy | None,
        session_key: str,
        slots: Mapping[str, str],
    ) -> ComplianceResult | None:
        """None when ``text`` (a script rendered with the session's slots) breaks no hard rule;
        otherwise the decision to send instead: the stage's fallback or the universal one."""
        broken = self.rendered_hits(text, policy)
        if not broken:
            return None
        policy = policy or self._flow_policy()
        decision, script_id, variant, sent, more = self._fallback(stage, policy, session_key, slots)
        return ComplianceResult(
            decision=decision,
            script_id=script_id,
            text=sent,
            score=None,
            threshold=policy.threshold,
            top_k=(),
            variant=variant,
            embed_ms=0.0,
            match_ms=0.0,
            rule_hits=(*broken, *more),
            reason=RENDERED_RULE,
        )

    def _flow_policy(self) -> CompliancePolicy:
        """The flow-level rules and universal fallback, for stages without a policy (end)."""
        universal = self.flow.universal_fallback or next(
            s.compliance.universal_fallback for s in self.flow.stages.values() if s.compliance
        )
        return CompliancePolicy(
            threshold=1.0,
            mode="strict",
            fallback=(),
            universal_fallback=universal,
            candidates=(),
            forbidden_phrases=self.flow.forbidden_phrases,
            forbidden_patterns=self.flow.forbidden_patterns,
        )

    def _fallback(
        self, stage: str, policy: CompliancePolicy, session_key: str, slots: Mapping[str, str]
    ) -> tuple[str, str, str | None, str, tuple[RuleHit, ...]]:
        """(decision, script id, variant, text, hits): the stage's fallback drawn for the
        session, else the universal one, rendered. A fallback that breaks a hard rule once
        filled with these slots is skipped (its hits are returned); should every one break, the
        universal fallback is sent with its placeholders left empty."""
        options: list[tuple[str, str, str | None]] = []
        if policy.fallback:
            chosen = pick_variant(policy.fallback, session_key, stage)
            options.append(("fallback", chosen, chosen))
            options += [("fallback", s, s) for s, _ in policy.fallback if s != chosen]
        options.append(("universal", policy.universal_fallback, None))
        skipped: list[RuleHit] = []
        for decision, script_id, variant in options:
            text = self.flow.render(script_id, dict(slots))
            broken = self.rendered_hits(text, policy)
            if not broken:
                return decision, script_id, variant, text, tuple(skipped)
            skipped += broken
        bare = self.flow.scripts[policy.universal_fallback].text.format_map(_Blank())
        return "universal", policy.universal_fallback, None, bare, tuple(skipped)

    def fallback(
        self, stage: str, policy: CompliancePolicy, session_key: str, slots: Mapping[str, str]
    ) -> ComplianceResult:
        """The decision when there is no draft at all (the backend failed)."""
        return self.check("", stage, policy, session_key, slots)
