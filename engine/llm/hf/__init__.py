"""The transformers internals of the in-process reference backend: model loading (GGUF read once
and cached), precision, the batched decoder with per-session KV caches, sampling, and the memory
estimate (``capacity``). Nothing outside :mod:`engine.llm` needs to import from here except the
CLI's ``capacity`` command and benchmarks."""
