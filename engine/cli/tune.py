"""`salesbot tune FLOW_DIR`: train a LoRA adapter for the flow's LLM stages on its own library.

Runs as a plain process (one CPU or GPU) or under ``accelerate launch --config_file ... -m
engine.cli tune ...`` for several GPUs (FSDP, CPU offload: see docs/tuning.md).
"""

from __future__ import annotations

import click

from engine.cli.common import ConfigError, _load_flow_or_exit, console
from engine.errors import SalesbotError


@click.command()
@click.argument("flow_dir", type=click.Path())
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    default=None,
    help="Adapter folder [default: FLOW_DIR/adapters/<flow name>].",
)
@click.option("--model", default=None, help="Base model folder or .gguf [default: the flow's].")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--rank", type=int, default=16, show_default=True, help="LoRA rank r.")
@click.option("--alpha", type=int, default=32, show_default=True, help="LoRA alpha.")
@click.option(
    "--dropout", type=float, default=0.0, show_default=True, help="LoRA dropout (costs ~25%)."
)
@click.option(
    "--targets",
    default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    show_default=True,
    help="Comma-separated module names LoRA adapts.",
)
@click.option(
    "--top-layers",
    type=int,
    default=8,
    show_default=True,
    help="Adapt only the last N decoder layers (0: all; all is ~2x slower on a CPU).",
)
@click.option(
    "--max-examples",
    type=int,
    default=600,
    show_default=True,
    help="Train on a seeded sample of this many examples, both arms' prompts (0: all).",
)
@click.option(
    "--decision-weight",
    type=float,
    default=8.0,
    show_default=True,
    help="Loss weight of each reply's first 6 tokens, where the script is chosen (1: none).",
)
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPUs and bf16-native CPUs, fp16 on older GPUs, else fp32.",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=False,
    show_default=True,
    help="Recompute activations in the backward pass: less memory, ~2x slower.",
)
@click.option("--load-in-8bit", is_flag=True, help="8-bit base weights (bitsandbytes, CUDA).")
@click.option("--max-length", type=int, default=1024, show_default=True)
@click.option("--save-every", type=int, default=50, show_default=True, help="Checkpoint period.")
@click.option(
    "--eval-examples",
    type=int,
    default=32,
    show_default=True,
    help="Held-out (bank) examples scored before and after; 0 for none.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in OUT.")
@click.option("--dry-run", is_flag=True, help="Build and count the examples; train nothing.")
def tune(flow_dir: str, out: str | None, model: str | None, **options) -> None:
    """Tune the flow's LLM stages: LoRA on (engine prompt -> approved script) examples."""
    from engine.tuning.data import build_tuning_set
    from engine.tuning.pipeline import tune_flow
    from engine.tuning.train import TuneConfig

    flow = _load_flow_or_exit(flow_dir)
    resume, dry_run = options.pop("resume"), options.pop("dry_run")
    options["targets"] = tuple(t.strip() for t in options["targets"].split(",") if t.strip())
    for name in ("top_layers", "max_examples"):  # 0: no limit
        options[name] = options[name] or None
    config = TuneConfig(**options)
    try:
        config.preflight()
        if dry_run:
            examples = build_tuning_set(flow, seed=config.seed, max_examples=config.max_examples)
            _summary(examples)
            return
        result, examples = tune_flow(flow, out, config, model_path=model, resume=resume)
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None
    _summary(examples)
    console.print(
        f"[green]adapter[/green] {result.out}: {result.steps} steps, loss "
        f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}, held-out reply loss "
        f"{_fmt(result.eval_before)} -> {_fmt(result.eval_after)}, "
        f"{result.tokens_per_s:,.0f} tokens/s, {result.seconds:.0f} s, "
        f"peak RSS {result.peak_rss_mb:,.0f} MB"
    )
    console.print(f"adapter hash {result.manifest.get('adapter_hash')}", soft_wrap=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(examples) -> None:
    by_stage = ", ".join(f"{k} {v}" for k, v in sorted(examples.stages().items()))
    console.print(f"{len(examples.examples)} examples ({by_stage})")
    console.print(f"data hash {examples.data_hash()}", soft_wrap=True)
    if examples.uncovered:
        pairs = ", ".join(f"{intent}@{stage}" for stage, intent in examples.uncovered)
        console.print(
            f"[yellow]no answering script[/yellow] (add tuning.answers / tuning.default_acts "
            f"in flow.yaml): {pairs}"
        )


__all__ = ["tune"]
