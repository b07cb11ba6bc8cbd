"""The adapters shipped with the example flows are intact and match their flows' libraries."""

from __future__ import annotations

import pytest

from engine.tuning.manifest import verify_adapter
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("flow", ["broadband_en", "insurance_zh"])
def test_the_shipped_adapters_match_their_flows(flow):
    """Committed adapters are intact, and were trained on the library the flow has now."""
    from engine.flow.loader import load_flow

    loaded = load_flow(ROOT / "flows" / flow)
    assert loaded.adapter is not None
    manifest = verify_adapter(loaded.adapter)
    assert manifest["library_hash"] == loaded.library_hash
    assert (loaded.adapter / "adapter.gguf").is_file()  # the llamacpp backend's form
