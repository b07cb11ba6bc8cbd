"""`salesbot tune` as a library call: flow -> examples -> LoRA adapter with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.flow.model import Flow
from engine.tuning.data import TrainingSet, bank_lines, build_training_set, build_tuning_set
from engine.tuning.train import TuneConfig, TuneResult, TuningConfigError, tune


def default_output(flow: Flow) -> Path:
    """``FLOW_DIR/adapters/<flow name>``: where flow.yaml's ``llm.adapter`` usually points."""
    return Path(flow.folder) / "adapters" / flow.name


def held_out_set(flow: Flow, seed: int) -> TrainingSet | None:
    """Examples over the simulation's held-out bank (utterances.yaml), or None without one."""
    if not (Path(flow.folder) / "utterances.yaml").is_file():
        return None
    return build_training_set(flow, seed=seed + 1, lines=bank_lines(flow))


def tune_flow(
    flow: Flow,
    out: str | Path | None,
    config: TuneConfig,
    *,
    model_path: str | Path | None = None,
    model: Any = None,
    tokenizer: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[TuneResult, TrainingSet]:
    """Build the flow's examples and train an adapter on ``model_path`` (default: the flow's
    transformers model, else SmolLM2-135M-Instruct), or on an in-memory ``model``."""
    config.preflight()
    examples = build_tuning_set(flow, seed=config.seed, max_examples=config.max_examples)
    if not examples.examples:
        raise TuningConfigError(
            f"{flow.folder}: no training example: no LLM stage reply is reachable with an "
            "answering script (add tuning.answers / tuning.default_acts in flow.yaml)"
        )
    held_out = held_out_set(flow, config.seed)
    base: dict[str, Any] = {}
    gguf_base = None
    if model is None:
        import torch

        from engine.llm.hf.models import default_model_path, load_tokenizer
        from engine.tuning.adapters import base_file_sha256

        path = Path(model_path or flow.backend_options.get("model") or default_model_path())
        if not path.is_absolute() and not path.exists():
            path = Path(flow.folder) / path
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        model = _load_base(path, dtype, config.load_in_8bit)
        tokenizer = load_tokenizer(path)
        base = {"file": path.name, "sha256": base_file_sha256(path)}
        gguf_base = path if path.suffix == ".gguf" else None
    fingerprint = None
    if not base:
        from engine.tuning.adapters import weights_fingerprint

        fingerprint = weights_fingerprint(model)
    fields = {
        "flow": flow.name,
        "flow_version": flow.version,
        "language": flow.language,
        "library_hash": flow.library_hash,
        "training_data_hash": examples.data_hash(),
        "training_examples_by_stage": examples.stages(),
        "uncovered": [list(pair) for pair in examples.uncovered],
        "held_out_data_hash": held_out.data_hash() if held_out else None,
        "base_model": base,
    }
    result = tune(
        model,
        tokenizer,
        examples.examples,
        out or default_output(flow),
        config,
        held_out=held_out.examples if held_out else (),
        manifest_fields=fields,
        resume=resume,
        progress=progress,
        base_weights_fingerprint=fingerprint,
        gguf_base=gguf_base,
    )
    return result, examples


def _load_base(path: Path, dtype, load_in_8bit: bool):
    from engine.llm.hf.models import load_model, model_dir

    if not load_in_8bit:
        return load_model(path, dtype)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        model_dir(path), quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    )
