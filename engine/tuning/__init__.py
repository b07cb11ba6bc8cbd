"""Tuning the LLM stage on a flow's own approved library.

- :mod:`engine.tuning.data`: (engine prompt -> approved reply) examples built from the flow;
- :mod:`engine.tuning.train`: LoRA training through PEFT and accelerate;
- :mod:`engine.tuning.manifest`: adapter folders as versioned artefacts (manifest, hash, checks);
- :mod:`engine.tuning.adapters`: loading an adapter onto a base model (merged at load).

Importing this package imports neither torch nor peft: the flow loader checks manifests.
"""
