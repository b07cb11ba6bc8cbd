"""LoRA training of the LLM stage on a flow's own examples, through PEFT and accelerate.

What runs, and why these defaults (measured on the 2-core dev VM with SmolLM2-135M, see
docs/tuning.md):

- **LoRA** (``peft.LoraConfig`` / ``get_peft_model``) on every attention and MLP projection,
  rank 16, alpha 32: 4.9 M trainable of 139 M parameters. **Dropout 0** by default: a profile of
  one step put LoRA dropout at ~25 % of the step time (an extra pass over every adapted input),
  for a regulariser a one-epoch run over a few thousand examples hardly needs.
- **Mixed precision** through ``accelerate.Accelerator``: ``auto`` is bf16 autocast on GPUs with
  bf16 and on CPUs that run bf16 natively (AVX512-BF16/AMX), fp16 with loss scaling on GPUs
  without bf16, and fp32 elsewhere: on a CPU that emulates bf16 the casts alone cost ~16 % of a
  step and the matmuls get slower, not faster.
- **Gradient checkpointing off** by default: it halved the speed at batch 2 on these cores. A
  135 M model's activations at batch 4 fit in a few GB; turn it on (``gradient_checkpointing``)
  for bigger models or batches (``salesbot capacity --train`` says when it is needed).
- **Loss on the reply tokens only**; batches are left-padded so that every reply ends at the last
  position, and the model computes logits for the last ``max reply + 1`` positions only
  (``logits_to_keep``): the 49 k-entry vocabulary projection of the prompt tokens is never
  computed, which saves most of the logits' memory and a fifth of the forward pass.
- **Length-grouped batches** (seeded): examples of similar length share a batch, so padding
  wastes little.
- **8-bit base weights** (bitsandbytes, ``load_in_8bit``) on CUDA only; **FSDP with CPU offload**
  comes from ``accelerate launch --config_file ...`` (docs/tuning.md): the loop below is the
  same, accelerate shards it.
- **Resumable**: ``accelerator.save_state`` every ``save_every`` steps under
  ``OUT/checkpoints/step-N``; ``resume`` continues from the latest one (same data order: the
  batches are a function of the seed).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import random
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import SalesbotError
from engine.tuning.data import Example

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TuningConfigError(SalesbotError):
    """A tuning option that cannot work here (fp16 on a CPU, 8-bit without CUDA, ...)."""


@dataclass
class TuneConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # stop after this many optimizer steps (None: epochs decide)
    lr: float = 1e-3  # measured: 2e-4 left one epoch undertrained (docs/benchmarks.md)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_PROJECTIONS
    top_layers: int | None = 8  # adapt only the last N decoder layers (None: all)
    max_examples: int | None = 600  # a seeded, balanced sample of the flow's examples (None: all)
    batch: int = 4
    grad_accum: int = 1
    warmup: float = 0.03  # fraction of the steps with a linear warm-up
    weight_decay: float = 0.0
    max_length: int = 1024  # longer examples are dropped (counted in the result)
    precision: str = "auto"
    gradient_checkpointing: bool = False
    load_in_8bit: bool = False
    seed: int = 0
    save_every: int = 50  # optimizer steps between checkpoints (0: none)
    log_every: int = 1
    eval_examples: int = 32  # held-out examples scored before and after training
    # The reply's first tokens choose the script (constrained decoding forces the rest once the
    # prefix names one: 2-3 tokens on the held-out bank); the rest is copying. Unweighted, the
    # choice is ~5% of the loss and one epoch left it near the prior (docs/tuning.md).
    decision_tokens: int = 6  # the first N reply tokens ...
    decision_weight: float = 8.0  # ... weigh this much in the training loss (1: unweighted)

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise TuningConfigError(f"precision {self.precision!r}: one of {', '.join(PRECISIONS)}")
        for name in ("rank", "alpha", "batch", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise TuningConfigError(f"{name} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise TuningConfigError("dropout must be in [0, 1)")
        if self.lr <= 0 or self.epochs <= 0:
            raise TuningConfigError("lr and epochs must be positive")
        if self.decision_weight <= 0 or self.decision_tokens < 0:
            raise TuningConfigError("decision-weight must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise TuningConfigError("max-steps must be at least 1")
        if self.top_layers is not None and self.top_layers < 1:
            raise TuningConfigError("top-layers must be at least 1 (or unset for every layer)")
        if self.max_examples is not None and self.max_examples < 1:
            raise TuningConfigError("max-examples must be at least 1 (or unset for all)")
        if not self.targets:
            raise TuningConfigError("targets: name at least one module (e.g. q_proj,v_proj)")

    def preflight(self) -> str:
        """:meth:`check` plus what this machine can run; accelerate's mixed-precision mode.
        Called before any model is loaded, so a wrong option fails in a second."""
        import torch

        self.check()
        cuda = torch.cuda.is_available()
        if self.load_in_8bit and not cuda:
            raise TuningConfigError("8-bit base weights (bitsandbytes) need a CUDA GPU")
        return mixed_precision(self.precision, cuda)


@dataclass
class TuneResult:
    out: Path
    steps: int
    losses: list[float]
    eval_before: float | None
    eval_after: float | None
    tokens_per_s: float
    seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    trainable: int
    total: int
    dropped: int
    manifest: dict[str, Any] = field(default_factory=dict)


# -- precision and hardware -------------------------------------------------------------------


def mixed_precision(precision: str, cuda: bool) -> str:
    """accelerate's ``mixed_precision`` for a ``precision`` choice (no, bf16 or fp16)."""
    import torch

    from engine.llm.hf.hardware import cpu_has_native_bf16

    if precision == "fp32":
        return "no"
    if precision == "fp16":
        if not cuda:
            raise TuningConfigError("fp16 mixed precision needs a CUDA GPU (use bf16 or fp32)")
        return "fp16"
    gpu_bf16 = cuda and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        return "bf16"
    if cuda:
        return "bf16" if gpu_bf16 else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"


# -- batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]
    reply: list[int]  # the reply's tokens plus the end-of-turn token

    def __len__(self) -> int:
        return len(self.prompt) + len(self.reply)


def encode_examples(
    tokenizer, examples: Sequence[Example], max_length: int
) -> tuple[list[Encoded], int]:
    """Token ids as the engine would see them: the prompt exactly as the transformers backend
    encodes it (chat template with the generation prompt), then the reply and end of turn."""
    end = tokenizer.eos_token_id
    encoded, dropped = [], 0
    for example in examples:
        ids = tokenizer.apply_chat_template(
            list(example.messages), add_generation_prompt=True, tokenize=True
        )
        prompt = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        reply = tokenizer.encode(example.reply, add_special_tokens=False) + [end]
        item = Encoded(prompt, reply)
        if len(item) > max_length:
            dropped += 1
            continue
        encoded.append(item)
    return encoded, dropped


def length_grouped_batches(
    lengths: Sequence[int], batch: int, rng: random.Random
) -> list[list[int]]:
    """Index batches of similar lengths, in random order: shuffle, sort within windows of 50
    batches, cut, shuffle the batches (the usual "group by length" sampler)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


def collate(
    items: Sequence[Encoded], pad_id: int, decision_tokens: int = 0, decision_weight: float = 1.0
) -> dict[str, Any]:
    """Left-padded ids, mask, positions, and labels for the last ``keep`` positions only; each
    label's loss weight (``decision_weight`` on the first ``decision_tokens`` of a reply)."""
    import torch

    width = max(len(item) for item in items)
    keep = max(len(item.reply) for item in items) + 1
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    weights = torch.zeros((len(items), width))
    for row, item in enumerate(items):
        seq = item.prompt + item.reply
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
        start = width - len(item.reply)
        labels[row, start:] = torch.tensor(item.reply)
        weights[row, start:] = 1.0
        weights[row, start : start + decision_tokens] = decision_weight
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "labels": labels[:, width - keep + 1 :],  # targets of logits[:, :-1] of the kept tail
        "weights": weights[:, width - keep + 1 :],
        "keep": keep,
        "tokens": int(mask.sum()),
    }


def _logits_kwarg(model) -> str | None:
    """transformers names the "logits for the last N positions only" argument
    ``logits_to_keep`` (>= 4.50) or ``num_logits_to_keep`` (4.45-4.49)."""
    params = inspect.signature(model.get_base_model().forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


def reply_loss(model, batch: dict[str, Any], keep_kwarg: str | None, weighted: bool = False):
    """Summed cross-entropy over the reply tokens and their count (``weighted``: each token's
    loss times its weight, and the weights' sum)."""
    import torch.nn.functional as F

    extra = {keep_kwarg: batch["keep"]} if keep_kwarg else {}
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        **extra,
    )
    logits = out.logits[:, -batch["keep"] :][:, :-1].float()
    labels = batch["labels"]
    if weighted:
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
            reduction="none",
        )  # fmt: skip
        weights = batch["weights"].reshape(-1).to(losses.device)
        return (losses * weights).sum(), float(weights.sum())
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return total, int((labels != -100).sum())


# -- the run ----------------------------------------------------------------------------------


def tune(
    model,
    tokenizer,
    train: Sequence[Example],
    out: str | Path,
    config: TuneConfig,
    *,
    held_out: Sequence[Example] = (),
    manifest_fields: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    base_weights_fingerprint: str | None = None,
    gguf_base: str | Path | None = None,
) -> TuneResult:
    """Train a LoRA adapter on ``train`` and save it with its manifest in ``out``.

    ``model``: a transformers causal LM (its weights are not changed: PEFT wraps it and only the
    adapter trains). ``held_out``: examples scored (mean reply-token loss) before and after.
    ``manifest_fields``: the flow's hashes and the base model's identity, written with the
    hyperparameters, the figures and the adapter hash. ``gguf_base``: the base model's GGUF;
    the adapter is then also written as a GGUF LoRA (``adapter.gguf``, for the llamacpp
    backend), before the manifest, so the adapter hash covers both forms.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from engine.tuning.gguf_lora import GGUF_ADAPTER, write_gguf_lora
    from engine.tuning.manifest import write_manifest

    precision = config.preflight()
    out = Path(out)
    set_seed(config.seed)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=not cuda,
    )
    if config.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    layers = _adapted_layers(model, config.top_layers)
    lora = LoraConfig(
        layers_to_transform=layers,
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise TuningConfigError(f"LoRA: {exc}") from None
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    keep_kwarg = _logits_kwarg(model)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, dropped = encode_examples(tokenizer, train, config.max_length)
    if not encoded:
        raise TuningConfigError("no training example fits max_length")
    evaluated, _ = encode_examples(tokenizer, held_out[: config.eval_examples], config.max_length)
    rng = random.Random(config.seed)
    lengths = [len(e) for e in encoded]
    per_epoch = math.ceil(len(encoded) / config.batch)
    schedule = [
        b
        for _ in range(math.ceil(config.epochs))
        for b in length_grouped_batches(lengths, config.batch, rng)
    ]
    world = accelerator.num_processes
    schedule = schedule[accelerator.process_index :: world]  # each process its share
    steps_total = math.ceil(
        min(len(schedule), math.ceil(per_epoch * config.epochs / world)) / config.grad_accum
    )
    if config.max_steps:
        steps_total = min(steps_total, config.max_steps)

    # The model is prepared first: under FSDP the optimizer must see the sharded parameters.
    model = accelerator.prepare(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup * steps_total), steps_total
    )
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)

    def evaluate() -> float | None:
        if not evaluated:
            return None
        model.eval()
        loss_sum, count = 0.0, 0
        with torch.no_grad(), accelerator.autocast():
            for start in range(0, len(evaluated), config.batch):
                batch = _to(collate(evaluated[start : start + config.batch], pad), accelerator)
                loss, n = reply_loss(model, batch, keep_kwarg)
                loss_sum, count = loss_sum + float(loss), count + n
        model.train()
        return loss_sum / max(count, 1)

    checkpoints = out / "checkpoints"
    step, losses = 0, []
    if resume:
        step, losses = _resume(accelerator, checkpoints)
    eval_before = evaluate()
    model.train()
    started, tokens = time.perf_counter(), 0
    bar = _progress(progress and accelerator.is_main_process, steps_total, step)
    micro = step * config.grad_accum
    window_loss, window_n = 0.0, 0
    try:
        while step < steps_total and micro < len(schedule):
            with accelerator.accumulate(model):
                items = [encoded[i] for i in schedule[micro]]
                batch = _to(
                    collate(items, pad, config.decision_tokens, config.decision_weight),
                    accelerator,
                )
                with accelerator.autocast():
                    loss_sum, n = reply_loss(model, batch, keep_kwarg, weighted=True)
                accelerator.backward(loss_sum / max(n, 1))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro += 1
            tokens += batch["tokens"]
            window_loss, window_n = window_loss + float(loss_sum.detach()), window_n + n
            if accelerator.sync_gradients:
                step += 1
                losses.append(window_loss / max(window_n, 1))
                window_loss, window_n = 0.0, 0
                rate = tokens / max(time.perf_counter() - started, 1e-9)
                if bar is not None:
                    bar.update(losses[-1], rate)
                if config.save_every and step % config.save_every == 0 and step < steps_total:
                    _checkpoint(accelerator, checkpoints, step, losses)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    eval_after = evaluate()

    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    result = TuneResult(
        out=out,
        steps=step,
        losses=losses,
        eval_before=eval_before,
        eval_after=eval_after,
        tokens_per_s=tokens * world / max(seconds, 1e-9),
        seconds=seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        trainable=trainable,
        total=total,
        dropped=dropped,
    )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("adapter_model.safetensors", "adapter_model.bin"):
            (out / stale).unlink(missing_ok=True)
        unwrapped.save_pretrained(out, state_dict=state, safe_serialization=True)
        _machine_independent(out)
        (out / GGUF_ADAPTER).unlink(missing_ok=True)
        if gguf_base is not None:
            write_gguf_lora(out, gguf_base)
        hyper = asdict(config)
        hyper["targets"] = list(config.targets)
        fields = dict(manifest_fields or {})
        if base_weights_fingerprint:
            fields.setdefault("base_model", {})["weights_sha256"] = base_weights_fingerprint
        result.manifest = write_manifest(
            out,
            {
                **fields,
                "hyperparameters": hyper,
                "training": {
                    "examples": len(encoded),
                    "dropped_too_long": dropped,
                    "steps": step,
                    "processes": world,
                    "mixed_precision": accelerator.mixed_precision,
                    "trainable_parameters": trainable,
                    "total_parameters": total,
                    "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None,
                    "tokens_per_s": round(result.tokens_per_s, 1),
                    "seconds": round(seconds, 1),
                    "peak_rss_mb": round(result.peak_rss_mb, 1),
                    "peak_gpu_mb": result.peak_gpu_mb,
                },
                "evaluation": {
                    "held_out_examples": len(evaluated),
                    "reply_loss_before": eval_before,
                    "reply_loss_after": eval_after,
                },
                "versions": _versions(),
            },
        )
        shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result


def _machine_independent(out: Path) -> None:
    """Keep the local path of the base model out of the hashed adapter files, so the same
    training on another machine gives the same adapter hash: PEFT's model card (an empty
    template; the manifest is the card) goes, and adapter_config.json names the base model by
    its folder's name (the manifest identifies it by sha256)."""
    (out / "README.md").unlink(missing_ok=True)
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base:
        config["base_model_name_or_path"] = Path(base).name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def _adapted_layers(model, top: int | None) -> list[int] | None:
    """Indices of the last ``top`` decoder layers (None: every layer, also when the model has no
    more than ``top``). Adapting only the top layers is what makes a CPU run fast: nothing below
    the lowest adapted layer needs a gradient, so autograd records none of it and the backward
    pass stops there (measured on 2 cores: 546 against 242 tokens/s with all 30 layers)."""
    if top is None:
        return None
    count = getattr(model.config, "num_hidden_layers", None)
    if count is None:
        raise TuningConfigError("top-layers: the model does not say how many layers it has")
    return list(range(count - top, count)) if top < count else None


def _to(batch: dict[str, Any], accelerator) -> dict[str, Any]:
    return {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}


def _checkpoint(accelerator, root: Path, step: int, losses: list[float]) -> None:
    folder = root / f"step-{step:06d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "progress.json").write_text(json.dumps({"step": step, "losses": losses}))


def _resume(accelerator, root: Path) -> tuple[int, list[float]]:
    found = sorted(root.glob("step-*/progress.json")) if root.is_dir() else []
    if not found:
        raise TuningConfigError(f"--resume: no checkpoint under {root}")
    latest = found[-1].parent
    accelerator.load_state(str(latest))
    progress = json.loads(found[-1].read_text())
    return int(progress["step"]), list(progress["losses"])


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": sys.version.split()[0]}
    for package in ("salesbot", "torch", "transformers", "peft", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[package] = md.version(package)
    return found


class _Bar:
    """A rich progress bar showing the last step's loss and the token throughput."""

    def __init__(self, total: int, done: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("tuning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("tune", total=total, completed=done, loss="-", rate="-")
        self.progress.start()

    def update(self, loss: float, rate: float) -> None:
        self.progress.update(self.task, advance=1, loss=f"{loss:.3f}", rate=f"{rate:,.0f}")

    def close(self) -> None:
        self.progress.stop()


def _progress(show: bool, total: int, done: int) -> _Bar | None:
    return _Bar(total, done) if show else None
