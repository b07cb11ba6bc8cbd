"""The intent classifier: small, fast, scikit-learn, the ruler of the funnel in every arm."""

from intents.classifier import IntentClassifier, IntentPrediction
from intents.persistence import ModelIntegrityError, load_or_train
from intents.rejection import OUT_OF_SCOPE

__all__ = [
    "OUT_OF_SCOPE",
    "IntentClassifier",
    "IntentPrediction",
    "ModelIntegrityError",
    "load_or_train",
]
