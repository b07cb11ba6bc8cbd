"""The intent classifier of a flow: its intents.yaml examples, trained with its ``classifier:``
settings (or loaded from the cache when they have not changed).

One place that maps the flow's settings onto :func:`intents.load_or_train`, so the engine and
the tests that build an engine's parts by hand train exactly the same model.
"""

from __future__ import annotations

from pathlib import Path

from engine.flow.model import Flow
from intents import IntentClassifier, load_or_train

SETTINGS = ("model", "threshold", "margin", "calibrate", "max_accuracy_drop")


def flow_classifier(flow: Flow, cache_dir: Path | None = None) -> IntentClassifier:
    """The classifier ``flow`` declares (``cache_dir``: where trained models are kept)."""
    examples = {k: list(v) for k, v in flow.intents.items()}
    # the flow's classifier: block, compiled to classifier_<setting> fields
    settings = {name: getattr(flow, f"classifier_{name}") for name in SETTINGS}
    return load_or_train(examples, language=flow.language, cache_dir=cache_dir, **settings)
