"""Map an LLM draft to the nearest approved script, or fall back.

The raw text never reaches the customer in strict mode: the reply is always a script from the
library. The fallback wording is drawn per session from the stage's weighted pool with a hash of
(session, stage), so it is sticky for the whole call and reproducible in an A/B analysis.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engine.compliance.embedders import Embedder
from engine.flow import CompliancePolicy, Flow

TOP_K = 3
VARIANT_SCHEME = "fallback:v1:"
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


@dataclass(frozen=True)
class ComplianceResult:
    decision: str  # approved | pass | fallback | universal
    script_id: str | None  # the script sent (None only when pass mode sends raw text)
    text: str  # what the customer hears
    score: float | None  # best similarity among eligible candidates
    threshold: float
    top_k: tuple[tuple[str, float], ...]
    variant: str | None  # the fallback script chosen, when a fallback was sent
    embed_ms: float
    match_ms: float

    @property
    def source(self) -> str:
        return {"approved": "llm", "pass": "llm"}.get(self.decision, self.decision)


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
    """Embeds the script library once per flow and decides per draft."""

    def __init__(self, flow: Flow, embedder: Embedder):
        self.flow = flow
        self.embedder = embedder
        self.ids = list(flow.scripts)
        texts = [self._index_text(flow.scripts[i].text) for i in self.ids]
        embedder.fit(texts)
        self.matrix = embedder.embed_batch(texts)
        self.row = {script_id: i for i, script_id in enumerate(self.ids)}

    @staticmethod
    def _index_text(text: str) -> str:
        """Placeholders read as their slot names ("{customer_name}" -> "customer name")."""
        return _PLACEHOLDER.sub(lambda m: m.group(1).replace("_", " "), text)

    @property
    def embedder_name(self) -> str:
        return self.embedder.name

    def eligible(self, policy: CompliancePolicy, slots: Mapping[str, str | None]) -> list[str]:
        """Candidates whose placeholders can all be filled from the session's known slots."""
        known = {k for k, v in slots.items() if v is not None}
        return [c for c in policy.candidates if self.flow.scripts[c].slots <= known]

    def check(
        self,
        raw_text: str,
        stage: str,
        policy: CompliancePolicy,
        session_key: str,
        slots: Mapping[str, str],
    ) -> ComplianceResult:
        started = time.perf_counter()
        candidates = self.eligible(policy, slots)
        top: tuple[tuple[str, float], ...] = ()
        embed_ms = 0.0
        if raw_text.strip() and candidates:
            vector = self.embedder.embed_batch([raw_text])[0]
            embed_ms = (time.perf_counter() - started) * 1000
            rows = [self.row[c] for c in candidates]
            scores = self.matrix[rows] @ vector
            order = np.argsort(-scores)[:TOP_K]
            top = tuple((candidates[i], float(scores[i])) for i in order)
        best = top[0] if top else None
        if best and best[1] >= policy.threshold:
            if policy.mode == "pass":
                decision, script_id, text = "pass", best[0], raw_text.strip()
            else:
                decision, script_id = "approved", best[0]
                text = self.flow.render(script_id, dict(slots))
            variant = None
        elif policy.fallback:
            variant = pick_variant(policy.fallback, session_key, stage)
            decision, script_id = "fallback", variant
            text = self.flow.render(script_id, dict(slots))
        else:
            decision, script_id, variant = "universal", policy.universal_fallback, None
            text = self.flow.render(script_id, dict(slots))
        total_ms = (time.perf_counter() - started) * 1000
        return ComplianceResult(
            decision=decision,
            script_id=script_id,
            text=text,
            score=best[1] if best else None,
            threshold=policy.threshold,
            top_k=top,
            variant=variant,
            embed_ms=embed_ms,
            match_ms=total_ms - embed_ms,
        )

    def fallback(
        self, stage: str, policy: CompliancePolicy, session_key: str, slots: Mapping[str, str]
    ) -> ComplianceResult:
        """The decision when there is no draft at all (the backend failed)."""
        return self.check("", stage, policy, session_key, slots)
