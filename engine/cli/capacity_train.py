"""`salesbot capacity --train`: the memory of tuning, per method, precision and layout."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.2f}"


def print_training(
    shape, label: str, *, batch: int, seq: int, keep: int, devices: int, rank: int, as_json: bool
) -> None:
    """Full fine-tuning vs LoRA, fp32/bf16/int8, with and without checkpointing, on one device
    and FSDP over ``devices`` with and without CPU offload (GiB)."""
    from engine.llm.hf.train_capacity import comparison

    rows = comparison(shape, batch=batch, seq=seq, keep=keep, devices=devices, rank=rank)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    table = Table(
        title=f"tuning {label}: batch {batch} x {seq} tokens, loss on {keep} positions, "
        f"LoRA r {rank} on every projection (GiB; AdamW 8 bytes per trainable parameter)"
    )
    for column in (
        "method",
        "weights",
        "ckpt",
        "layout",
        "trainable",
        "weights",
        "grads",
        "optimizer",
        "activations",
        "per device",
        "host",
    ):
        table.add_column(column, justify="left" if column in {"method", "layout"} else "right")
    for row in rows:
        layout = "1 device" if row.devices == 1 else f"FSDP x{row.devices}"
        layout += " + offload" if row.offload else ""
        table.add_row(
            row.method,
            row.dtype,
            "yes" if row.checkpointing else "no",
            layout,
            f"{row.trainable / 1e6:.1f} M",
            _gib(row.weights_bytes),
            _gib(row.gradient_bytes),
            _gib(row.optimizer_bytes),
            _gib(row.activation_bytes),
            _gib(row.device_bytes),
            _gib(row.host_bytes),
        )
    Console().print(table)
    Console().print(
        "Plus the process baseline (Python, torch, transformers, peft: a few hundred MB). "
        "Measured check: tests/test_train_capacity.py."
    )
