"""The LLM backend of a simulation: the flow's (or the one named), batched across the
conversations in flight (see :mod:`engine.simulation.batching`)."""

from __future__ import annotations

# KV-cache budget per conversation in flight (transformers backend, unless the flow sets
# cache_mb): a prompt of ~500 tokens holds ~11 MB in bf16 and ~22 MB in fp32. The backend's
# default 512 MB holds fewer than the 64 conversations in flight, and an LRU cache visited in
# turn by more sessions than it holds evicts each one before its next turn (no reuse at all).
CACHE_MB_PER_CONVERSATION = 32


def build_backend(name: str | None, flow, batch: int, concurrency: int | None = None):
    """The flow's LLM backend (``llm.backend``) or the one named, batched across conversations
    (see engine.simulation.batching)."""
    from engine.engine import flow_backend_options
    from engine.llm import create_backend
    from engine.simulation import standin  # noqa: F401  (registers script-sampler)
    from engine.simulation.batching import simulation_backend

    name = name or flow.backend
    if name == "script-sampler":
        backend = create_backend(name, flow=flow)
    else:
        options = flow_backend_options(flow, name)
        if name == "transformers" and concurrency:
            options.setdefault("cache_mb", max(512, CACHE_MB_PER_CONVERSATION * concurrency))
        backend = create_backend(name, **options)
    return simulation_backend(backend, max_batch=batch)
