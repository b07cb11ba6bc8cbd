"""`salesbot capacity`: how much memory a model needs for N concurrent sessions."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from engine.errors import SalesbotError


class _ConfigError(click.ClickException):
    exit_code = 2


def _size(value: int) -> str:
    if value >= 1 << 30:
        return f"{value / (1 << 30):.2f} GiB"
    if value >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value / 1024:.1f} KiB"


@click.command()
@click.option(
    "--model",
    default="smollm2-135m",
    show_default=True,
    help="A model folder, its config.json, a .gguf file, or smollm2-135m (the default model).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16", "int8"]),
    default="fp32",
    show_default=True,
)
@click.option("--context", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--sessions", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sessions decoded together (BatchingBackend's max_batch); 1 without batching.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--measure",
    is_flag=True,
    help="Also serve the default model in a fresh process and report its peak resident memory.",
)
@click.option("--train", is_flag=True, help="Memory of tuning (full vs LoRA, FSDP, offload).")
@click.option("--seq", type=click.IntRange(min=1), default=512, show_default=True, help="--train")
@click.option("--keep", type=click.IntRange(min=1), default=64, show_default=True, help="--train")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="--train")
@click.option("--rank", type=click.IntRange(min=1), default=16, show_default=True, help="--train")
def capacity(
    model: str,
    dtype: str,
    context: int,
    sessions: int,
    batch: int,
    as_json: bool,
    measure: bool,
    **train: int,
) -> None:
    """Estimate weights, KV cache per token and per session, activations and total memory."""
    from engine.llm.hf.capacity import MODEL_ALIASES, estimate, load_shape, measure_peak

    if train.pop("train"):
        from engine.cli.capacity_train import print_training

        try:
            shape, label = load_shape(model)
        except SalesbotError as exc:
            raise _ConfigError(str(exc)) from None
        return print_training(shape, label, batch=batch, as_json=as_json, **train)

    try:
        shape, label = load_shape(model)
        result = estimate(
            shape, dtype=dtype, context=context, sessions=sessions, batch=batch, model=label
        )
    except SalesbotError as exc:
        raise _ConfigError(str(exc)) from None
    measured = None
    if measure:
        if model.lower() not in MODEL_ALIASES or dtype == "fp16":
            raise _ConfigError("--measure serves the default model on the CPU (fp32|bf16|int8)")
        if batch != 1:
            raise _ConfigError("--measure serves sessions one at a time: use --batch 1")
        try:
            measured = measure_peak(dtype, context, sessions)
        except SalesbotError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        out = result.as_dict()
        if measured is not None:
            out["measured"] = measured
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(
        title=f"{label} {result.dtype}, context {context}, {sessions} sessions, "
        f"batch {result.batch}"
    )
    table.add_column("part")
    table.add_column("memory", justify="right")
    table.add_column("how", style="dim")
    table.add_row("weights", _size(result.weights_bytes), f"{result.params / 1e6:.1f} M params")
    table.add_row(
        "KV cache per token", _size(result.kv_per_token_bytes), "2 x layers x kv heads x dim"
    )
    table.add_row("KV cache per session", _size(result.kv_per_session_bytes), f"{context} tokens")
    table.add_row("cached sessions", _size(result.kv_cached_bytes), f"x {sessions}")
    table.add_row("working batch KV", _size(result.kv_working_bytes), f"x {result.batch}")
    table.add_row("activations", _size(result.activation_bytes), "prefill peak")
    table.add_row("total", _size(result.total_bytes), "plus the runtime's baseline")
    if measured is not None:
        peak = measured["peak"] - measured["base"]
        table.add_row(
            "measured peak",
            _size(peak),
            f"{peak / result.total_bytes - 1:+.0%} vs the estimate (RSS above the baseline)",
        )
    Console().print(table)
