"""The adapters shipped with the example flows are intact and match their flows' libraries."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

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


REPLY_LINE = re.compile(r"\[(\w+) \| (\w+) [\d.]+ \| (\w+) ([\w.]+)\]")


@pytest.mark.parametrize("backend", ["transformers", "llamacpp"])
@pytest.mark.parametrize("session", ["too-expensive-1", "too-expensive-2"])
def test_chat_answers_a_price_objection_with_an_approved_price_answer(backend, session, tmp_path):
    """`salesbot chat flows/broadband_en` with the shipped adapter, as a user would talk to it:
    "that's too expensive" after the pitch is answered in the objection stage, by the LLM, with
    an approved script whose act answers a price objection. The stage samples its drafts, with
    a seed from the session id: a named session replays the same draws, and two of them are
    two draws."""
    from engine.cli.main import main
    from engine.flow.loader import load_flow

    flow = load_flow(ROOT / "flows" / "broadband_en")
    said = ["yes, speaking", "12 High Street", "we stream a lot of films", "that's too expensive"]
    result = CliRunner().invoke(
        main,
        ["chat", str(flow.folder), "--backend", backend, "--session", session,
         "--db", f"sqlite:///{tmp_path}/c.db"],
        input="\n".join(said) + "\n\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"session {session}\n" in result.output  # a new session under the name given
    replies = REPLY_LINE.findall(re.sub(r"\x1b\[[0-9;]*m", "", result.output))
    assert [r[0] for r in replies] == ["identity", "needs", "pitch", "objection"], result.output
    stage, intent, source, script_id = replies[-1]
    assert (intent, source) == ("price_objection", "llm")
    assert flow.scripts[script_id].act == "handle_price_objection", script_id
