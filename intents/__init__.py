"""The intent classifier: small, fast, scikit-learn, the ruler of the funnel in every arm."""

from intents.classifier import IntentClassifier, IntentPrediction
from intents.persistence import load_or_train

__all__ = ["IntentClassifier", "IntentPrediction", "load_or_train"]
