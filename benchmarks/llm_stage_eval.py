"""The LLM stage on the held-out bank: free vs constrained decoding, greedy vs sampled.

    python benchmarks/llm_stage_eval.py flows/broadband_en --limit 60 --json /tmp/eval_en.json
    python benchmarks/llm_stage_eval.py flows/insurance_zh --backend llamacpp
    python benchmarks/llm_stage_eval.py flows/broadband_en \
        --adapter none flows/broadband_en/adapters/broadband_en

``--adapter`` takes several values (``none``: the base model); each model drafts every setting,
and the table shows them side by side, measured in one run on the same contexts.

Contexts, the right acts per customer line and the metrics are defined in
:mod:`engine.tuning.evaluate` (customer lines from utterances.yaml only). Per setting (decoding x
sampling) and stage it prints: contexts, approved %, approved with an act that answers the
customer %, drafts with a hard-rule hit, fallback %, the LLM decision latency p50 (generation +
compliance filter; constrained decoding always runs at batch 1, free decoding at ``--batch``,
whose latency is then the batch's wall time) and the mean number of generated tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine.compliance import ComplianceFilter, create_embedder  # noqa: E402
from engine.errors import SalesbotError  # noqa: E402
from engine.flow.loader import load_flow  # noqa: E402
from engine.llm.registry import create_backend  # noqa: E402
from engine.tuning.evaluate import (  # noqa: E402
    DECODINGS,
    evaluate,
    held_out_contexts,
    read_lines,
    setting_name,
    summarise,
    threshold_sweep,
)

SWEEP = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("flow", type=Path, help="flow folder (with utterances.yaml)")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "llamacpp"])
    parser.add_argument("--model", help="model path for the backend (default: SmolLM2)")
    parser.add_argument(
        "--adapter", nargs="+", default=["none"],
        help="LoRA adapter folders made by `salesbot tune`; none: the base model",
    )  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="transformers: auto | fp32 | bf16")
    parser.add_argument(
        "--decoding", nargs="+", default=list(DECODINGS)[::-1], choices=DECODINGS,
        help="settings run in this order (constrained first: it is the quick one)",
    )  # fmt: skip
    parser.add_argument(
        "--sampling", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"]
    )
    parser.add_argument("--stages", nargs="+", help="LLM stages to evaluate (default: all)")
    parser.add_argument(
        "--lines", type=Path,
        help="YAML of customer lines per intent (utterances.yaml's `intents:`) said at the LLM "
        "turn instead of the bank's, e.g. the flow's intents.yaml (the training lines) or lines "
        "written outside the project",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, help="at most this many contexts (an even spread)")
    parser.add_argument("--seed", type=int, default=0, help="context i is sampled with seed+i")
    parser.add_argument(
        "--batch", type=int, default=1,
        help="free decoding: contexts per generate_batch call (latency is then the batch's)",
    )  # fmt: skip
    parser.add_argument(
        "--deadline", type=float, default=600.0,
        help="seconds per draft, replacing the stage's (a loaded CPU must not cut drafts short)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the figures and every outcome here")
    return parser.parse_args(argv)


def build_backend(args: argparse.Namespace, adapter: str):
    options: dict = {}
    if args.model:
        options["model"] = args.model
    if adapter != "none":
        options["adapter"] = adapter
    if args.backend == "transformers":
        options["dtype"] = args.dtype
    backend = create_backend(args.backend, **options)
    backend.load()
    return backend


def table(rows) -> str:
    head = (
        f"{'setting':<26} {'stage':<10} {'n':>4} {'approved':>9} {'right act':>10} "
        f"{'rule hits':>9} {'fallback':>9} {'p50 s':>7} {'tokens':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.setting:<26} {r.stage:<10} {r.n:>4} {r.approved:>9.0%} {r.right:>10.0%} "
            f"{r.rule_hits:>9} {r.fallback:>9.0%} {r.latency_p50_s:>7.2f} {r.tokens_mean:>7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        flow = load_flow(args.flow)
        lines = read_lines(flow, args.lines) if args.lines else None
        contexts = held_out_contexts(flow, stages=args.stages, limit=args.limit, lines=lines)
    except SalesbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compliance = ComplianceFilter(flow, create_embedder(flow.embedder))
    load_before = os.getloadavg()
    print(
        f"{flow.name}: {len(contexts)} held-out contexts, backend {args.backend}, "
        f"adapters {' '.join(args.adapter)}, load average {load_before[0]:.1f}",
        flush=True,
    )
    outcomes, started = [], time.perf_counter()
    for adapter in args.adapter:
        try:
            backend = build_backend(args, adapter)
        except SalesbotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if "constrained" in args.decoding and not getattr(backend, "can_constrain", False):
            print(f"error: backend {args.backend} cannot constrain decoding", file=sys.stderr)
            return 2
        model = "base" if adapter == "none" else "tuned"
        for decoding in args.decoding:  # in the order given; figures are written after each
            for sampling in args.sampling:
                sampled = sampling == "sampled"
                t0 = time.perf_counter()
                found = evaluate(
                    flow, backend, compliance, contexts, decoding=decoding, sampled=sampled,
                    seed=args.seed, batch=args.batch if decoding == "free" else 1,
                    deadline_s=args.deadline,
                )  # fmt: skip
                outcomes += [dataclasses.replace(o, model=model) for o in found]
                print(
                    f"  {setting_name(decoding, sampled, model)}: {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
                write_json(args, flow, contexts, outcomes, load_before)
        backend.close()
    print(table(summarise(outcomes)))
    for model in dict.fromkeys(o.model for o in outcomes):
        free = [o for o in outcomes if o.model == model and o.decoding == "free" and not o.sampled]
        if free:
            print(f"{model} free greedy at one threshold for every stage: right act, wrong act")
            for threshold, right, wrong in threshold_sweep(free, SWEEP):
                print(f"  {threshold:.2f}  {right:6.1%}  {wrong:6.1%}")
    print(f"wall {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    return 0


def write_json(args, flow, contexts, outcomes, load_before) -> None:
    """The figures so far (written after every setting, so a cut-short run keeps them)."""
    rows = summarise(outcomes)
    load_after = os.getloadavg()
    if args.json:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "flow": flow.name,
            "backend": args.backend,
            "adapter": args.adapter,
            "contexts": len(contexts),
            "lines": str(args.lines) if args.lines else "bank",
            "batch_free": args.batch,
            "deadline_s": args.deadline,
            "seed": args.seed,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "load_average": {"before": load_before, "after": load_after},
            "summary": [r.as_dict() for r in rows],
            "outcomes": [
                {
                    "setting": setting_name(o.decoding, o.sampled, o.model),
                    "score": o.score,
                    "nearest_act": o.nearest_act,
                    "stage": o.context.stage,
                    "intent": o.context.intent,
                    "reading": o.context.reading,
                    "entered": o.context.entered,
                    "customer": o.context.customer,
                    "right_acts": list(o.context.right_acts),
                    "draft": o.draft,
                    "decision": o.decision,
                    "script_id": o.script_id,
                    "act": o.act,
                    "right": o.right,
                    "rule_hits": o.rule_hits,
                    "tokens": o.completion_tokens,
                    "latency_s": round(o.latency_s, 4),
                    "error": o.error,
                }
                for o in outcomes
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    sys.exit(main())
