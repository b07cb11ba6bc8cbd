"""The compliance filter: LLM drafts in, approved scripts (or fallbacks) out."""

from engine.compliance.early_stop import StreamedDraft, stream_and_match
from engine.compliance.embedders import (
    Embedder,
    available_embedders,
    create_embedder,
    register_embedder,
)
from engine.compliance.filter import ComplianceFilter, ComplianceResult, Match
from engine.compliance.index import ScriptIndex
from engine.compliance.rules import RuleHit

__all__ = [
    "ComplianceFilter",
    "ComplianceResult",
    "Embedder",
    "Match",
    "RuleHit",
    "ScriptIndex",
    "StreamedDraft",
    "available_embedders",
    "create_embedder",
    "register_embedder",
    "stream_and_match",
]
