"""The intent classifier of a flow: its intents.yaml examples, trained with its ``classifier:``
settings (or loaded from the cache when they have not changed).

One place that maps the flow's settings onto :func:`intents.load_or_train`, so the engine and
the tests that build an engine's parts by hand train exactly the same model.
"""

from __future__ import annotations

from pathlib import Path

from engine.flow.model import Flow
from intents import IntentClassifier, load_or_train


def flow_classifier(flow: Flow, cache_dir: Path | None = None) -> IntentClassifier:
    """The classifier ``flow`` declares (``cache_dir``: where trained models are kept)."""
    return load_or_train(
        {k: list(v) for k, v in flow.intents.items()},
        language=flow.language,
        threshold=flow.classifier_threshold,
        margin=flow.classifier_margin,
        model=flow.classifier_model,
        calibrate=flow.classifier_calibrate,
        max_accuracy_drop=flow.classifier_max_accuracy_drop,
        cache_dir=cache_dir,
    )
