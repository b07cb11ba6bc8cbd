"""The compliance filter: LLM drafts in, approved scripts (or fallbacks) out."""

from engine.compliance.embedders import Embedder, available_embedders, create_embedder
from engine.compliance.filter import ComplianceFilter, ComplianceResult

__all__ = [
    "ComplianceFilter",
    "ComplianceResult",
    "Embedder",
    "available_embedders",
    "create_embedder",
]
