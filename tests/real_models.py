"""The broadband flow with the real default models (SmolLM2-135M with the flow's shipped
adapter, MiniLM), shared by the integration tests that run whole calls through them, and what
strict mode may send there."""

from __future__ import annotations

from dataclasses import replace

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import MiniLMEmbedder
from engine.engine import flow_backend_options
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
    """(flow, classifier, loaded backend, MiniLM compliance filter): load once per module. The
    backend serves the flow's tuned adapter, as the engine does (``llm.adapter``)."""
    flow = load_flow(BROADBAND)
    backend = TransformersBackend(**flow_backend_options(flow, "transformers"))
    backend.load()
    return flow, flow_classifier(flow), backend, ComplianceFilter(flow, MiniLMEmbedder())


def allowed_in(flow, stage: str) -> set[str]:
    """What strict mode may send for an llm reply in ``stage``: its approved scripts, its
    fallback wordings and the universal fallback, rendered with the call's slots."""
    return allowed_by(flow, flow.stages[stage].compliance)


def allowed_by(flow, policy) -> set[str]:
    """What ``policy`` (a stage's, or the pure-LLM arm's over the whole library) may send."""
    ids = {*policy.candidates, *(s for s, _ in policy.fallback), policy.universal_fallback}
    return {flow.scripts[i].render(SLOTS) for i in ids}


def with_decoding(flow, decoding: str):
    """``flow`` with every LLM stage and the pure-LLM arm decoding as ``decoding`` says (the
    shipped broadband flow says constrained; free drafting is the filter's harder case)."""
    stages = {
        name: stage
        if stage.compliance is None
        else replace(stage, compliance=replace(stage.compliance, decoding=decoding))
        for name, stage in flow.stages.items()
    }
    pure = flow.pure_llm and replace(flow.pure_llm, decoding=decoding)
    return replace(flow, stages=stages, pure_llm=pure)


def library(flow) -> set[str]:
    """Every script of ``flow`` rendered with the call's slots."""
    return {script.render(SLOTS) for script in flow.scripts.values()}
