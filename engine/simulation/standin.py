"""A stand-in for the LLM that costs nothing: for benchmarks and quick runs of a flow's mechanics.

``script-sampler`` drafts a reply the way a small model roughly does in a sales stage: usually
something close to one of the stage's approved scripts (for the pure_llm arm's playbook
prompt, of any stage's) (with some words dropped, so the
compliance filter still has to match it), preferring the script that shares most words with
what the customer just said, and sometimes something off-script that the filter rejects. It is
no model of language; it lets an A/A test or a sensitivity sweep run thousands of conversations
through the real engine in minutes. Numbers measured with it are labelled as such.

Randomness: each draft is a function of (sampler seed, caller's seed or session key, prompt),
so a run is reproducible whatever order concurrent conversations call it in, a resumed
conversation gets the drafts it would have got, and two arms (different sessions) get
independent drafts, as from a sampling LLM. Without seed or session key it draws from its own
Generator.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time

import numpy as np

from engine.flow.model import Flow
from engine.llm.base import BatchItem, Generation, LLMBackend
from engine.llm.prompt import PLAYBOOK_HEADER
from engine.llm.registry import register_backend

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
_WORD = re.compile(r"\w+")
OFF_SCRIPT = (
    "Honestly I am not sure what to say about that, let me think.",
    "As an AI language model I cannot help with this request.",
    "Great question! The weather today is lovely and sunny.",
    "Thank you thank you thank you for your patience patience.",
    "I will give you a fifty percent discount if you sign today.",
    "Let me transfer you to my manager right away.",
)


class ScriptSampler(LLMBackend):
    """See the module docstring. ``miss_rate``: share of off-script drafts; ``relevance``: share
    of drafts that take the script most related to the customer's words."""

    name = "script-sampler"

    def __init__(
        self,
        flow: Flow,
        miss_rate: float = 0.25,
        relevance: float = 0.5,
        drop_rate: float = 0.15,
        seed: int = 0,
    ):
        self.flow = flow
        self.miss_rate = miss_rate
        self.relevance = relevance
        self.drop_rate = drop_rate
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._stages: list[tuple[str, tuple[str, ...]]] = []
        for stage in sorted(flow.stages.values(), key=lambda s: -len(s.goal)):
            if stage.is_end or not stage.goal or stage.compliance is None:
                continue
            texts = tuple(
                _PLACEHOLDER.sub(lambda m: m.group(1).replace("_", " "), flow.scripts[i].text)
                for i in stage.compliance.candidates
            )
            self._stages.append((stage.goal, texts))

    def _generate(self, request: BatchItem) -> Generation:
        messages, seed, session_key = request.messages, request.seed, request.session_key
        started = time.perf_counter()
        system = messages[0]["content"] if messages else ""
        if PLAYBOOK_HEADER in system:  # the pure_llm arm's playbook: any stage's scripts
            texts = tuple(dict.fromkeys(x for _, t in self._stages for x in t))
        else:
            texts = next((t for goal, t in self._stages if goal in system), ())
        customer = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if seed is not None or session_key is not None:
            key = hashlib.sha256(repr((seed, session_key, messages)).encode("utf-8")).digest()
            draws = np.random.default_rng([self.seed, int.from_bytes(key[:8], "big")]).random(4)
        else:
            with self._lock:
                draws = self._rng.random(4)
        if not texts or draws[0] < self.miss_rate:
            text = OFF_SCRIPT[int(draws[1] * len(OFF_SCRIPT))]
        else:
            text = self._pick(texts, customer, draws[1], draws[2])
            text = self._reword(text, draws[3])
        words = text.split()[: request.params.max_new_tokens]
        return Generation(
            " ".join(words), prompt_tokens=0, completion_tokens=len(words),
            seconds=time.perf_counter() - started,
        )  # fmt: skip

    def _pick(self, texts: tuple[str, ...], customer: str, u_relevant: float, u: float) -> str:
        if u_relevant < self.relevance and customer:
            said = set(_WORD.findall(customer.lower()))
            overlap = [len(said & set(_WORD.findall(t.lower()))) for t in texts]
            best = max(overlap)
            if best > 0:
                tied = [t for t, o in zip(texts, overlap, strict=True) if o == best]
                return tied[int(u * len(tied))]
        return texts[int(u * len(texts))]

    def _reword(self, text: str, u: float) -> str:
        """Drop words deterministically from ``u``: a draft near, not equal to, the script."""
        rng = np.random.default_rng(int(u * 2**32))
        words = text.split()
        kept = [w for w in words if rng.random() >= self.drop_rate]
        return " ".join(kept or words)


def _factory(flow: Flow, **options) -> ScriptSampler:
    return ScriptSampler(flow, **options)


register_backend("script-sampler", _factory)
