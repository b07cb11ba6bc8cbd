"""`salesbot tune` end to end on a tiny random-weight model and a tiny flow.

One adapter is trained once per module (a few steps, a second or two) and then checked from
every side: the loss fell, only the adapter's weights changed, the manifest names the hashes,
the engine loads it and its replies change, and a tampered or mismatched adapter is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from engine.cli.main import main
from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.errors import FlowValidationError
from engine.flow.loader import load_flow
from engine.flow.tuning import StaleAdapterWarning
from engine.llm.hf.backend import TransformersBackend
from engine.llm.prompt import INTENT_NOTE, STAGE_NOTE
from engine.tuning.adapters import merge_adapter, weights_fingerprint
from engine.tuning.data import (
    OPENING_SHARE,
    build_training_set,
    build_tuning_set,
    nearest_script,
    offer_intents,
    playbook_messages,
)
from engine.tuning.manifest import MANIFEST, AdapterError, adapter_hash, read_manifest
from engine.tuning.pipeline import tune_flow
from engine.tuning.train import Encoded, TuneConfig, collate
from intents import load_or_train
from storage import Store
from tests.conftest import ROOT
from tests.test_llm_tiny import GREEDY, one_thread, tiny_model, tiny_tokenizer

__all__ = ["one_thread"]  # the fixture: one torch thread for toy-sized matmuls

MINI = ROOT / "tests" / "flows" / "mini"
TUNING = """
tuning:
  answers: {affirm: [pitch]}
  default_acts: {pitch: [pitch]}
"""
CONFIG = TuneConfig(epochs=3, max_steps=8, lr=3e-2, rank=4, alpha=8, batch=2, seed=0, save_every=0)


def tuned_flow_dir(root: Path, adapter: str | None = None) -> Path:
    """tests/flows/mini plus a tuning section (and optionally llm.adapter)."""
    folder = root / "flow"
    if not folder.exists():
        shutil.copytree(MINI, folder)
        text = (folder / "flow.yaml").read_text() + TUNING
        (folder / "flow.yaml").write_text(text)
    if adapter:
        text = (folder / "flow.yaml").read_text()
        text = text.replace("llm:\n", f"llm:\n  adapter: {adapter}\n", 1)
        (folder / "flow.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    folder = tuned_flow_dir(root)
    flow = load_flow(folder)
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, examples = tune_flow(
        flow, folder / "adapters" / "mini", CONFIG, model=model, tokenizer=tokenizer, progress=False
    )
    return {
        "root": root,
        "folder": folder,
        "flow": flow,
        "model": model,
        "before": before,
        "result": result,
        "examples": examples,
        "adapter": folder / "adapters" / "mini",
    }


# -- training data -----------------------------------------------------------------------------


def _hybrid(examples) -> list:
    """The hybrid arm's examples: their prompt names the stage's task (the playbook does not)."""
    return [e for e in examples if "Your task now:" in e.messages[0]["content"]]


def test_examples_are_the_engines_prompts_answered_by_approved_scripts(trained):
    flow, examples = trained["flow"], trained["examples"]
    hybrid = _hybrid(examples.examples)
    assert len(hybrid) == len(flow.intents["affirm"])  # greeting -> pitch on "yes"
    for example in hybrid:
        assert example.stage == "pitch" and example.intent == "affirm"
        assert example.script_id == "pitch.speed" and example.act == "pitch"
        assert example.reply == flow.render("pitch.speed", {"agent_name": "Sam"})
        system, *turns = example.messages
        assert "Your task now: Offer the faster plan." in system["content"]
        assert turns[0]["role"] == "assistant" and turns[0]["content"].startswith("Hello, this")
        # the customer's words, then (as the engine hands it over) the stage and the
        # classifier's reading
        said = {"role": "user", "content": example.customer}
        read = {"role": "system", "content": f"{STAGE_NOTE}pitch. {INTENT_NOTE}affirm"}
        unread = {"role": "system", "content": f"{STAGE_NOTE}pitch."}
        assert turns[-2:] in ([said, read], [said, unread])
        assert example.customer in flow.intents["affirm"]
    # unread prompts (the classifier was not sure) are a minority, as in serving
    assert sum(e.messages[-1] == unread for e in hybrid) < len(hybrid) / 3


def test_the_pure_llm_arm_is_taught_what_the_hybrid_arm_would_say(trained):
    """Both arms' prompts train one adapter: the pure-LLM arm's playbook prompt at every turn,
    answered by the script the hybrid arm sends there, its opening included."""
    examples = trained["examples"]
    pure = [e for e in examples.examples if e not in _hybrid(examples.examples)]
    assert pure and all("Work through these steps" in e.messages[0]["content"] for e in pure)
    assert not any(
        INTENT_NOTE in m["content"] or m["content"].startswith(STAGE_NOTE)
        for e in pure
        for m in e.messages
    )  # no classifier, no stage
    openings = [e for e in pure if e.customer == ""]
    assert openings and {e.script_id for e in openings} == {"greeting.open"}
    assert openings[0].messages[-1]["content"] == "(The customer is listening. Go on.)"
    # "yes" to the greeting: the pitch the state machine moves on to (the example's stage is
    # where its reply belongs)
    yes = [e for e in pure if e.intent == "affirm"]
    assert yes and {(e.stage, e.script_id) for e in yes} == {("pitch", "pitch.speed")}


def test_training_data_is_seeded_and_hashed(trained):
    flow = trained["flow"]
    again = build_tuning_set(flow, seed=CONFIG.seed, max_examples=CONFIG.max_examples)
    assert again.data_hash() == trained["examples"].data_hash()
    other = build_tuning_set(flow, seed=CONFIG.seed + 1, max_examples=CONFIG.max_examples)
    assert other.data_hash() != again.data_hash()


def test_a_capped_set_gives_the_opening_its_share_and_spreads_the_rest_over_the_replies():
    """The pure-LLM arm's turns are mostly re-prompts; the capped set gives the opening (every
    call's first turn) a fixed eighth of the pure share and spreads the rest over the scripts,
    so the pitch and objection answers are taught too."""
    flow = load_flow(ROOT / "flows" / "broadband_en")
    capped = build_tuning_set(flow, seed=0, max_examples=300)
    assert len(capped.examples) == 300
    pure = [e for e in capped.examples if e not in _hybrid(capped.examples)]
    assert len(pure) == round(300 * 0.35)
    openings = [e for e in pure if not e.customer]
    assert len(openings) == len(pure) // OPENING_SHARE
    assert {e.script_id for e in openings} == {"greeting.open"}
    counts = Counter(e.script_id for e in pure if e.customer)
    available = Counter(
        e.script_id
        for e in build_training_set(flow, arm="pure_llm", messages_fn=playbook_messages).examples
        if e.customer
    )
    top = max(counts.values())
    # round robin: a script got fewer than the most only when it had no more examples
    assert all(n >= top - 1 or n == available[script] for script, n in counts.items())
    assert available.most_common(1)[0][1] > 10 * top  # the re-prompts did not take over
    assert len(openings) > 2 * top  # the opening is not one script among fifty
    assert {"pitch", "objection"} <= {e.stage for e in pure}
    # the hybrid share: an even spread over (stage, intent), the odd lines of a stage pooled
    hybrid = _hybrid(capped.examples)
    kinds = Counter((e.stage, e.intent) for e in hybrid)
    offer = offer_intents(flow)
    assert "price_objection" in offer and "provide_identity" not in offer
    top = max(kinds.values())
    assert all(n >= top - 1 for (_, intent), n in kinds.items() if intent in offer)
    for stage in ("pitch", "objection"):
        odd = sum(n for (at, intent), n in kinds.items() if at == stage and intent not in offer)
        assert top - 1 <= odd <= top  # "speaking" said in the pitch weighs as one intent


def test_broadband_training_lines_come_from_intents_never_from_the_bank():
    from engine.tuning.data import bank_lines

    flow = load_flow(ROOT / "flows" / "broadband_en")
    examples = build_training_set(flow, seed=0)
    bank = {line for lines in bank_lines(flow).values() for line in lines}
    taught = {line for lines in flow.intents.values() for line in lines}
    said = {e.customer for e in examples.examples}
    histories = {m["content"] for e in examples.examples for m in e.messages if m["role"] == "user"}
    assert said <= taught and not (histories & bank)
    assert set(examples.stages()) == {"pitch", "objection"}
    # every reply is an approved candidate of its stage whose act answers the line
    for e in examples.examples[:200]:
        assert e.script_id in flow.stages[e.stage].compliance.candidates
    price = [e for e in examples.examples if e.intent == "price_objection"]
    assert price and {e.act for e in price} <= {"handle_price_objection", "inform"}
    # the same line, wherever it is said, is taught one answer: the nearest answering script
    answers: dict[tuple[str, str, str], set[str]] = {}
    for e in examples.examples:
        answers.setdefault((e.stage, e.intent, e.customer), set()).add(e.script_id)
    assert all(len(ids) == 1 for ids in answers.values())
    # every prompt ends with the engine's note; about one in eight without the reading
    notes = [e.messages[-1] for e in examples.examples]
    assert all(n["role"] == "system" and n["content"].startswith(STAGE_NOTE) for n in notes)
    unread = sum(INTENT_NOTE not in n["content"] for n in notes)
    assert 0.08 < unread / len(examples.examples) < 0.18


def test_the_answering_script_nearest_to_the_line_and_its_intent_is_taught():
    """An act is coarse: of the scripts that answer, the one a labeller would pick."""
    flow = load_flow(ROOT / "flows" / "broadband_en")
    choose = nearest_script(flow, flow.intents)
    candidates = flow.stages["pitch"].compliance.candidates
    informs = [s for s in candidates if flow.scripts[s].act == "inform"]
    assert len(informs) > 5
    # the line's own words pick among its intent's answers
    assert choose("ask_details", "can I cancel if I change my mind?", informs) == (
        "pitch.cooling_off"
    )
    assert choose("ask_details", "how much is it a day?", informs) == "pitch.price_per_day"
    assert choose("ask_details", "how long is the contract?", informs) == "pitch.details"
    # one intent's lines land on a few of its act's scripts, not spread over all of them
    picked = Counter(choose("ask_price", line, informs) for line in flow.intents["ask_price"])
    assert len(picked) <= len(informs) // 2
    assert picked.most_common(1)[0][1] >= len(flow.intents["ask_price"]) / 3


def test_tuning_section_errors_name_file_line_and_field(tmp_path):
    folder = tuned_flow_dir(tmp_path)
    text = (folder / "flow.yaml").read_text().replace("{affirm: [pitch]}", "{affirm: [haggle]}")
    (folder / "flow.yaml").write_text(text.replace("{pitch: [pitch]}", "{greeting: [pitch]}"))
    with pytest.raises(FlowValidationError) as caught:
        load_flow(folder)
    message = str(caught.value)
    assert "flow.yaml:" in message and "tuning.answers.affirm.0" in message
    assert "no script in scripts.yaml has act 'haggle'" in message
    assert "tuning.default_acts.greeting: 'greeting' is not an llm stage" in message


# -- training ----------------------------------------------------------------------------------


def test_loss_falls_and_only_the_adapter_trains(trained):
    result = trained["result"]
    assert result.steps == CONFIG.max_steps and len(result.losses) == CONFIG.max_steps
    assert sum(result.losses[-2:]) / 2 < 0.8 * sum(result.losses[:2]) / 2
    after = trained["model"].state_dict()
    base_keys = [k for k in after if "lora_" not in k]
    assert base_keys and all(
        torch.equal(after[k], trained["before"][k.replace("base_model.model.", "", 1)])
        for k in base_keys
        if k.replace("base_model.model.", "", 1) in trained["before"]
    )
    lora = [k for k in after if "lora_B" in k]
    assert lora and any(after[k].abs().sum() > 0 for k in lora)  # B starts at zero
    assert 0 < result.trainable < result.total / 10


def test_manifest_holds_the_hashes(trained):
    manifest = read_manifest(trained["adapter"])
    flow = trained["flow"]
    assert manifest["library_hash"] == flow.library_hash
    assert manifest["training_data_hash"] == trained["examples"].data_hash()
    assert manifest["adapter_hash"] == adapter_hash(trained["adapter"])
    assert manifest["base_model"]["weights_sha256"] == weights_fingerprint(
        tiny_model(len(tiny_tokenizer()), seed=3)
    )
    assert manifest["hyperparameters"]["rank"] == 4
    assert manifest["hyperparameters"]["targets"][0] == "q_proj"
    assert manifest["training"]["steps"] == CONFIG.max_steps
    # nothing machine-specific in the hashed files: no checkpoints, no PEFT model card (it names
    # the base model by its local path)
    files = sorted(p.name for p in trained["adapter"].iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "salesbot-manifest.json"]


def test_training_resumes_from_a_checkpoint_with_the_same_result(tmp_path, monkeypatch):
    import engine.tuning.train as train

    flow = load_flow(tuned_flow_dir(tmp_path))
    tokenizer = tiny_tokenizer()
    config = dataclasses.replace(CONFIG, max_steps=4, save_every=2)
    whole, _ = tune_flow(
        flow, tmp_path / "whole", config, model=tiny_model(len(tokenizer), 3),
        tokenizer=tokenizer, progress=False,
    )  # fmt: skip
    real = train._checkpoint

    def crash_after_saving(accelerator, root, step, losses):
        real(accelerator, root, step, losses)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_checkpoint", crash_after_saving)
    with pytest.raises(KeyboardInterrupt):
        tune_flow(
            flow, tmp_path / "cut", config, model=tiny_model(len(tokenizer), 3),
            tokenizer=tokenizer, progress=False,
        )  # fmt: skip
    monkeypatch.setattr(train, "_checkpoint", real)
    resumed, _ = tune_flow(
        flow, tmp_path / "cut", config, model=tiny_model(len(tokenizer), 3),
        tokenizer=tokenizer, progress=False, resume=True,
    )  # fmt: skip
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-4)
    assert resumed.steps == 4


# -- serving and refusing -----------------------------------------------------------------------


def _backend(adapter: Path | None, seed: int = 3) -> TransformersBackend:
    tokenizer = tiny_tokenizer()
    backend = TransformersBackend(dtype="fp32", device="cpu", adapter=adapter)
    return backend.use_model(tiny_model(len(tokenizer), seed=seed), tokenizer)


def test_backend_merges_the_adapter_and_its_replies_change(trained):
    example = trained["examples"].examples[0]
    messages = list(example.messages)
    base = _backend(None).generate(messages, GREEDY).text
    tuned_backend = _backend(trained["adapter"])
    tuned = tuned_backend.generate(messages, GREEDY).text
    assert tuned != base
    assert tuned_backend.adapter_hash == read_manifest(trained["adapter"])["adapter_hash"]
    assert not any("lora" in name for name, _ in tuned_backend.model.named_modules())


def test_engine_records_the_adapter_hash_in_every_audit_row(trained, tmp_path):
    folder = tuned_flow_dir(trained["root"] / "engine", adapter="../../flow/adapters/mini")
    flow = load_flow(folder)
    assert flow.adapter == trained["adapter"].resolve() and not flow.warnings
    classifier = load_or_train({k: list(v) for k, v in flow.intents.items()}, language="en")
    engine = Engine(
        flow=flow,
        classifier=classifier,
        backend=_backend(flow.adapter),
        compliance=ComplianceFilter(flow, CharNgramEmbedder()),
        store=Store(f"sqlite:///{tmp_path / 'a.db'}"),
    )
    opening = engine.start("c1", {"customer_name": "Alex"})
    engine.turn(opening.session_id, "yes that's me")
    audit = engine.store.compliance_decisions(opening.session_id)
    assert len(audit) == 1 and audit[0].adapter_hash == flow.adapter_hash
    assert flow.adapter_hash.startswith("adapter:v1:")


def test_a_tampered_adapter_is_refused_with_a_clear_error(trained, tmp_path):
    folder = tuned_flow_dir(tmp_path, adapter="adapters/mini")
    copy = folder / "adapters" / "mini"
    shutil.copytree(trained["adapter"], copy)
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(FlowValidationError) as caught:
        load_flow(folder)
    message = str(caught.value)
    assert "flow.yaml:" in message and "llm.adapter" in message
    assert "do not match their manifest" in message
    with pytest.raises(AdapterError, match="do not match their manifest"):
        _backend(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(AdapterError, match="missing"):
        _backend(copy)


def test_a_missing_adapter_is_a_validation_error(tmp_path):
    folder = tuned_flow_dir(tmp_path, adapter="adapters/nowhere")
    with pytest.raises(FlowValidationError, match="adapter folder not found"):
        load_flow(folder)


def test_an_adapter_for_other_base_weights_is_refused(trained):
    with pytest.raises(AdapterError, match="other base weights"):
        _backend(trained["adapter"], seed=4)


def test_an_adapter_trained_on_another_library_is_a_warning(trained, tmp_path):
    folder = tmp_path / "flow"
    shutil.copytree(trained["folder"], folder)
    text = (folder / "flow.yaml").read_text().replace("llm:\n", "llm:\n  adapter: adapters/mini\n")
    (folder / "flow.yaml").write_text(text)
    scripts = (folder / "scripts.yaml").read_text().replace("eight pounds", "8 pounds")
    (folder / "scripts.yaml").write_text(scripts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flow = load_flow(folder)
        out = CliRunner().invoke(main, ["validate", str(folder)])
    assert flow.adapter_hash is not None and len(flow.warnings) == 1
    assert "trained on script library" in str(flow.warnings[0])
    assert "flow.yaml:" in str(flow.warnings[0])
    assert any(issubclass(w.category, StaleAdapterWarning) for w in caught)
    assert out.exit_code == 0 and "WARNING: adapter adapters/mini" in out.output


def test_merge_refuses_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        merge_adapter(tiny_model(len(tiny_tokenizer())), tmp_path / "none")


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_tune_configuration_errors_exit_2(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["tune", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a flow folder" in missing.output
    folder = tuned_flow_dir(tmp_path)
    fp16 = runner.invoke(main, ["tune", str(folder), "--precision", "fp16"])
    if not torch.cuda.is_available():
        assert fp16.exit_code == 2 and "fp16 mixed precision needs a CUDA GPU" in fp16.output
    rank = runner.invoke(main, ["tune", str(folder), "--rank", "0"])
    assert rank.exit_code == 2 and "rank must be at least 1" in rank.output
    weight = runner.invoke(main, ["tune", str(folder), "--decision-weight", "0"])
    assert weight.exit_code == 2 and "decision-weight must be positive" in weight.output


def test_the_replys_first_tokens_weigh_more_and_the_prompt_nothing():
    """Where the script is chosen weighs ``decision_weight``; the copying after it weighs 1."""
    short, long = Encoded([5, 6, 7], [1, 2, 3]), Encoded([5], [1, 2, 3, 4, 9, 9])
    batch = collate([short, long], pad_id=0, decision_tokens=2, decision_weight=8.0)
    labels, weights = batch["labels"], batch["weights"]
    assert labels.shape == weights.shape
    assert weights[0].tolist() == [0, 0, 0, 8, 8, 1] and labels[0, -3:].tolist() == [1, 2, 3]
    assert weights[1].tolist() == [8, 8, 1, 1, 1, 1]
    assert ((weights > 0) == (labels != -100)).all()  # only reply tokens count


def test_cli_tune_dry_run_counts_the_examples():
    out = CliRunner().invoke(main, ["tune", str(ROOT / "flows" / "broadband_en"), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "600 examples (greeting" in out.output and "data hash tuning-data:v1:" in out.output


def test_manifest_is_json_with_sorted_keys(trained):
    text = (trained["adapter"] / MANIFEST).read_text()
    assert json.loads(text)["format"] == "salesbot-adapter/1"
