"""How much memory tuning needs: weights, gradients, optimizer states, activations (seed §6.1).

For a Llama-style decoder (:class:`engine.llm.hf.capacity.ModelShape`), per method:

- **weights**: every parameter at the base's bytes (fp32 4, bf16 2; int8: the decoder's linear
  weights 1 byte, the rest 2, as bitsandbytes keeps them). Full fine-tuning in bf16 keeps an
  fp32 master copy (4 more bytes per parameter) as mixed-precision training does.
- **gradients**: one per trainable parameter, at the trainable weights' bytes (fp32 for LoRA
  adapters, whatever the base: PEFT keeps adapters in fp32).
- **optimizer states**: AdamW's two moments, 8 bytes per trainable parameter (fp32).
- **activations** for ``batch`` sequences of ``seq`` tokens, as autograd saves them per token and
  layer: the two norms' inputs and outputs, q/k/v and the attention output, the MLP's gate, up,
  act(gate) and product (``6 hidden + 2 kv + 4 intermediate`` values), plus the attention
  weights where attention runs as plain matmuls (torch's math path, which a padded batch takes
  on CPUs: ``2 x heads x seq`` values per token), plus the logits of the ``keep`` reply
  positions (three fp32 copies: logits, their float copy and the softmax gradient). With
  **gradient checkpointing** only each layer's input is kept (``hidden`` values per token and
  layer) and one layer's activations exist at a time.
- **FSDP over N devices** shards weights, gradients and optimizer states N ways (activations are
  per device); with **CPU offload** the parameters, gradients and optimizer states live in host
  memory and a device holds only the layer being computed (gathered whole) and its activations.

Not counted: the Python process with torch, transformers and peft imported (a constant
measured separately as the baseline), the tokenizer and the examples. The test compares the
estimate with the peak resident memory of a real short tuning run in a fresh process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import SalesbotError
from engine.llm.hf.capacity import ModelShape

METHODS = ("full", "lora")
WEIGHT_DTYPES = ("fp32", "bf16", "int8")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainEstimate:
    method: str
    dtype: str
    batch: int
    seq: int
    checkpointing: bool
    devices: int
    offload: bool
    params: int
    trainable: int
    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    device_bytes: int  # per device
    host_bytes: int  # CPU memory the offloaded states take (0 without offload)

    @property
    def total_bytes(self) -> int:
        """Everything on one machine with one device (the single-device total)."""
        return (
            self.weights_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def module_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in, out) features of each decoder projection."""
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    return {
        "q_proj": (shape.hidden, q),
        "k_proj": (shape.hidden, kv),
        "v_proj": (shape.hidden, kv),
        "o_proj": (q, shape.hidden),
        "gate_proj": (shape.hidden, shape.intermediate),
        "up_proj": (shape.hidden, shape.intermediate),
        "down_proj": (shape.intermediate, shape.hidden),
    }


def lora_params(shape: ModelShape, rank: int, targets: tuple[str, ...] = PROJECTIONS) -> int:
    """Trainable parameters of LoRA: ``rank x (in + out)`` per adapted projection and layer."""
    shapes = module_shapes(shape)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise SalesbotError(f"unknown LoRA target(s) {', '.join(unknown)} (known: {PROJECTIONS})")
    return shape.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def activation_bytes(
    shape: ModelShape,
    batch: int,
    seq: int,
    keep: int,
    checkpointing: bool,
    value_bytes: int = 4,
    math_attention: bool = False,
) -> int:
    """Activations autograd holds at the peak (the start of the backward pass)."""
    per_layer = 9 * shape.hidden + 4 * shape.intermediate
    if math_attention:
        per_layer += 2 * shape.heads * seq
    tokens = batch * seq
    if checkpointing:
        layers = tokens * (shape.layers * shape.hidden + per_layer) * value_bytes
    else:
        layers = tokens * shape.layers * per_layer * value_bytes
    logits = 3 * batch * keep * shape.vocab * 4
    embeddings = tokens * shape.hidden * 4
    return layers + logits + embeddings


def estimate_training(
    shape: ModelShape,
    *,
    method: str = "lora",
    dtype: str = "fp32",
    batch: int = 4,
    seq: int = 512,
    keep: int = 64,
    checkpointing: bool = False,
    devices: int = 1,
    offload: bool = False,
    rank: int = 16,
    targets: tuple[str, ...] = PROJECTIONS,
    math_attention: bool = False,
) -> TrainEstimate:
    """Memory of one training step; see the module docstring for each part.

    ``keep``: positions whose logits are computed (salesbot tunes on the reply tokens only, so
    the longest reply + 1; ``seq`` for plain causal-LM training).
    """
    if method not in METHODS:
        raise SalesbotError(f"method {method!r}: one of {', '.join(METHODS)}")
    if dtype not in WEIGHT_DTYPES:
        raise SalesbotError(f"dtype {dtype!r}: one of {', '.join(WEIGHT_DTYPES)}")
    if method == "full" and dtype == "int8":
        raise SalesbotError("full fine-tuning cannot train int8 weights (use LoRA on an int8 base)")
    for label, value in (("batch", batch), ("seq", seq), ("devices", devices), ("rank", rank)):
        if value < 1:
            raise SalesbotError(f"{label} must be >= 1, got {value}")
    params = shape.params()
    if dtype == "int8":
        weights = shape.linear_params() + 2 * shape.other_params()
    else:
        weights = params * (4 if dtype == "fp32" else 2)
    if method == "full":
        trainable = params
        grad_bytes = 4 if dtype == "fp32" else 2
        master = 0 if dtype == "fp32" else 4 * params  # fp32 master copy for mixed precision
        weights += master
    else:
        trainable = lora_params(shape, rank, targets)
        grad_bytes = 4
        weights += 4 * trainable  # the adapters themselves, fp32
    gradients = trainable * grad_bytes
    optimizer = trainable * 8
    value_bytes = 4 if dtype == "fp32" else 2
    activations = activation_bytes(
        shape, batch, seq, min(keep, seq), checkpointing, value_bytes, math_attention
    )
    states = weights + gradients + optimizer
    if offload:
        layer = (weights // max(shape.layers, 1)) if method == "full" else 0
        device = activations + layer + (0 if method == "full" else weights // devices)
        host = states // devices if method == "full" else (gradients + optimizer) // devices
    else:
        device = states // devices + activations
        host = 0
    return TrainEstimate(
        method=method,
        dtype=dtype,
        batch=batch,
        seq=seq,
        checkpointing=checkpointing,
        devices=devices,
        offload=offload,
        params=params,
        trainable=trainable,
        weights_bytes=weights,
        gradient_bytes=gradients,
        optimizer_bytes=optimizer,
        activation_bytes=activations,
        device_bytes=device,
        host_bytes=host,
    )


def comparison(shape: ModelShape, **common: Any) -> list[TrainEstimate]:
    """The grid `salesbot capacity --train` prints: full vs LoRA x fp32/bf16/int8 x
    checkpointing, on one device and, when ``devices`` > 1, FSDP with and without offload."""
    devices = int(common.pop("devices", 1))
    layouts = [(1, False)] + ([(devices, False), (devices, True)] if devices > 1 else [])
    rows = []
    for method in METHODS:
        for dtype in WEIGHT_DTYPES:
            if method == "full" and dtype == "int8":
                continue
            for checkpointing in (False, True):
                layouts = [(1, False)] + (
                    [(devices, False), (devices, True)] if devices > 1 else []
                )
                for n, offload in layouts:
                    rows.append(
                        estimate_training(
                            shape,
                            method=method,
                            dtype=dtype,
                            checkpointing=checkpointing,
                            devices=n,
                            offload=offload,
                            **common,
                        )
                    )
    return rows


# -- measurement -----------------------------------------------------------------------------

_MEASURE = r"""
import gc, json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from engine.tuning.data import Example
from engine.tuning.train import TuneConfig, tune
from engine.llm.hf.measure import reset_peak, status

shape = json.loads(sys.argv[1])
batch, seq, keep, steps, ckpt = (int(a) for a in sys.argv[2:7])
torch.set_num_threads(1)

class Tokens:
    # Fixed-length ids without a tokenizer: every prompt has seq - keep + 1 tokens and every
    # reply keep - 2 tokens plus the end of turn, so a batch is exactly batch x seq.
    eos_token_id, pad_token_id = 2, 0
    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [3 + (i * 7) % 97 for i in range(seq - keep + 1)]
    def encode(self, text, add_special_tokens=False):
        return [5 + (i * 11) % 89 for i in range(keep - 2)]

def model_of(s):
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
        intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=max(seq, 64), tie_word_embeddings=s["tied"])
    torch.manual_seed(0)
    return LlamaForCausalLM(config)

examples = [Example("s", "i", "c", ({"role": "user", "content": "x"},), "r", "id", "a")] * (
    batch * steps)
small = dict(shape, hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=128)
config = TuneConfig(max_steps=steps, batch=batch, save_every=0, precision="fp32",
                    gradient_checkpointing=bool(ckpt), eval_examples=0)
import tempfile
with tempfile.TemporaryDirectory() as out:
    tune(model_of(small), Tokens(), examples[:batch], out, config, progress=False)  # warm-up
    gc.collect()
    base = status("VmRSS")
    reset_peak()
    tune(model_of(shape), Tokens(), examples, out, config, progress=False)
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""


def measure_training_peak(
    shape: ModelShape,
    *,
    batch: int,
    seq: int,
    keep: int,
    checkpointing: bool = False,
    steps: int = 2,
    env: dict[str, str] | None = None,
) -> dict[str, int]:
    """Tune a random-weight model of ``shape`` for ``steps`` LoRA steps (fp32, CPU, the
    default targets) in a fresh process; its resident memory before (``base``, after a warm-up
    run that loads torch's kernels) and at the peak (bytes). A fresh process so that nothing
    else is allocated; RSS because torch's CPU allocator keeps no statistics."""
    from engine.llm.hf.measure import run_script

    args = (batch, seq, keep, steps, int(checkpointing))
    return run_script(_MEASURE, [json.dumps(asdict(shape)), *(str(v) for v in args)], env)
