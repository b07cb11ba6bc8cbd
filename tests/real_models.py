"""The broadband flow with the real default models (SmolLM2-135M, MiniLM), shared by the
integration tests that run whole calls through them, and what strict mode may send there."""

from __future__ import annotations

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import MiniLMEmbedder
from engine.flow.classifier import flow_classifier
from engine.flow.loader import load_flow
from engine.llm.hf.backend import TransformersBackend
from tests.conftest import BROADBAND

SLOTS = {
    "customer_name": "Alex",
    "agent_name": "Sam",
    "company": "Brightline Broadband",
    "current_plan": "100 Mbps",
}


def broadband_parts():
    """(flow, classifier, loaded backend, MiniLM compliance filter): load once per module."""
    flow = load_flow(BROADBAND)
    backend = TransformersBackend()
    backend.load()
    return flow, flow_classifier(flow), backend, ComplianceFilter(flow, MiniLMEmbedder())


def allowed_in(flow, stage: str) -> set[str]:
    """What strict mode may send for an llm reply in ``stage``: its approved scripts, its
    fallback wordings and the universal fallback, rendered with the call's slots."""
    policy = flow.stages[stage].compliance
    ids = {*policy.candidates, *(s for s, _ in policy.fallback), policy.universal_fallback}
    return {flow.scripts[i].render(SLOTS) for i in ids}
