"""Does showing SmolLM2 the stage's approved lines make its drafts usable? Real drafts, measured.

    python benchmarks/compliance_prompt.py --threads 1 generate --seeds 2
    python benchmarks/compliance_prompt.py --threads 1 generate --greedy --seeds 1 \
        --variants baseline,lines_nearest --append
    python benchmarks/compliance_prompt.py evaluate benchmarks/data/compliance_drafts.json

``generate`` drafts a reply for every context of ``compliance_contexts.py`` (16 customer turns
in pitch and objection) with each prompt variant and seed, through the real TransformersBackend
(SmolLM2-135M-Instruct, the flow's generation parameters, batched); ``evaluate`` runs every draft
through the real compliance filter (MiniLM, the flow's rules, thresholds and margins) and
reports, per variant:

- accepted: the draft was mapped to an approved script (not a fallback);
- fitting: it was mapped to a script that fits what the customer said (the context's list);
- misfit: accepted, but with a script that does not fit (the customer hears an approved but
  wrong answer: worse than a fallback);
- the median best similarity, and how many drafts broke a hard rule.

Variants: ``baseline`` (the prompt as the engine builds it with no lines), ``lines_all`` (every
eligible approved line of the stage, the model told to pick one and say it as written) and
``lines_nearest`` (the 6 approved lines nearest to what the customer said, by MiniLM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_env import ROOT, run_subcommand, subcommand_parser
from compliance_contexts import CONTEXTS, SLOTS, Context, history

from engine.compliance import ComplianceFilter, create_embedder
from engine.compliance.index import as_vector
from engine.flow.loader import load_flow
from engine.llm import prompt as prompt_module

FLOW_DIR = ROOT / "flows" / "broadband_en"
VARIANTS = ("baseline", "lines_all", "lines_nearest")
NEAREST = 6


def approved_lines(flt: ComplianceFilter, context: Context, variant: str) -> list[str]:
    """The lines a variant shows the model (rendered, eligible, stage order or nearest first)."""
    policy = flt.flow.stages[context.stage].compliance
    eligible = flt.eligible(policy, SLOTS)
    if variant == "lines_nearest":
        vector = as_vector(flt.embedder.embed_batch([context.customer])[0])
        view = flt.index.view(policy.candidates)
        scores = dict(zip(view.script_ids, view.script_scores(vector), strict=True))
        eligible = sorted(eligible, key=lambda s: -scores[s])[:NEAREST]
    return [flt.flow.render(s, SLOTS) for s in eligible]


def messages_for(flt: ComplianceFilter, context: Context, variant: str) -> list[dict]:
    flow = flt.flow
    stage = flow.stages[context.stage]
    lines = [] if variant == "baseline" else approved_lines(flt, context, variant)
    kwargs = {}
    if "approved_lines" in prompt_module.build_messages.__code__.co_varnames:
        kwargs["approved_lines"] = lines  # the engine's own prompt, once it takes lines
        return prompt_module.build_messages(
            flow, stage, history(flow, context), SLOTS, context.customer, **kwargs
        )
    messages = prompt_module.build_messages(
        flow, stage, history(flow, context), SLOTS, context.customer
    )
    if lines:
        listing = "\n".join(f"- {line}" for line in lines)
        messages[0]["content"] += (
            "\nApproved lines (choose the one that best answers the customer and say it "
            f"exactly as written, nothing else):\n{listing}"
        )
    return messages


def generate(args: argparse.Namespace) -> None:
    from engine.llm.hf.backend import TransformersBackend

    flow = load_flow(FLOW_DIR)
    flt = ComplianceFilter(flow, create_embedder("minilm"))
    backend = TransformersBackend()
    backend.load()
    jobs = [
        (variant, context, seed)
        for variant in args.variants.split(",")
        for context in CONTEXTS
        for seed in range(1, args.seeds + 1)
    ]
    drafts = []
    for start in range(0, len(jobs), args.batch):
        chunk = jobs[start : start + args.batch]
        items = []
        for variant, context, seed in chunk:
            overrides = {"deadline_s": 3600}
            if args.greedy:
                overrides["do_sample"] = False  # near-greedy: does the model copy a line then?
            params = flow.stages[context.stage].generation.model_copy(update=overrides)
            items.append((messages_for(flt, context, variant), params, seed))
        started = time.perf_counter()
        generations = backend.generate_batch(items)
        seconds = time.perf_counter() - started
        print(
            f"batch {start // args.batch + 1}: {len(items)} drafts in {seconds:.0f} s", flush=True
        )
        for (variant, context, seed), g in zip(chunk, generations, strict=True):
            drafts.append(
                {
                    "variant": variant + ("+greedy" if args.greedy else ""),
                    "context": context.name,
                    "stage": context.stage,
                    "seed": seed,
                    "prompt_tokens": g.prompt_tokens,
                    "completion_tokens": g.completion_tokens,
                    "finish_reason": g.finish_reason,
                    "text": g.text,
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        drafts = json.loads(args.out.read_text())["drafts"] + drafts
    args.out.write_text(json.dumps({"flow_version": flow.version, "drafts": drafts}, indent=1))
    print(f"wrote {len(drafts)} drafts to {args.out}")


def evaluate(args: argparse.Namespace) -> None:
    flow = load_flow(FLOW_DIR)
    flt = ComplianceFilter(flow, create_embedder("minilm"))
    contexts = {c.name: c for c in CONTEXTS}
    drafts = json.loads(args.drafts.read_text())["drafts"]
    by_variant: dict[str, list[dict]] = {}
    for d in drafts:
        context = contexts[d["context"]]
        policy = flow.stages[context.stage].compliance
        match = flt.match(d["text"], policy, SLOTS)
        script = match.accepted(policy)
        by_variant.setdefault(d["variant"], []).append(
            {
                **d,
                "score": match.score or 0.0,
                "best": match.top_k[0][0] if match.top_k else None,
                "accepted": script,
                "fitting": script in context.fitting,
                "rule_hit": bool(match.rule_hits),
            }
        )
    print("| prompt | drafts | accepted | fitting | misfit | rule hits | median score | tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, rows in by_variant.items():
        n = len(rows)
        accepted = sum(r["accepted"] is not None for r in rows)
        fitting = sum(r["fitting"] for r in rows)
        print(
            f"| {variant} | {n} | {accepted / n:.0%} | {fitting / n:.0%} | "
            f"{(accepted - fitting) / n:.0%} | {sum(r['rule_hit'] for r in rows) / n:.0%} | "
            f"{statistics.median(r['score'] for r in rows):.2f} | "
            f"{statistics.median(r['completion_tokens'] for r in rows):.0f} |"
        )
    if args.show:
        for variant, rows in by_variant.items():
            for r in rows:
                verdict = "FIT" if r["fitting"] else ("MISFIT" if r["accepted"] else "fallback")
                print(
                    f"[{variant}/{r['context']}/{r['seed']}] {verdict} {r['score']:.2f} "
                    f"{r['best']}: {r['text']}"
                )


def main() -> None:
    parser, (gen, ev) = subcommand_parser(__doc__.splitlines()[0], "generate", "evaluate")
    gen.add_argument("--seeds", type=int, default=2)
    gen.add_argument("--batch", type=int, default=16)
    gen.add_argument("--variants", default=",".join(VARIANTS))
    gen.add_argument("--greedy", action="store_true", help="Greedy decoding instead of sampling.")
    gen.add_argument("--append", action="store_true", help="Add to the drafts already in --out.")
    gen.add_argument("--out", type=Path, default=ROOT / "benchmarks/data/compliance_drafts.json")
    ev.add_argument("drafts", type=Path)
    ev.add_argument("--show", action="store_true", help="Print every draft and its verdict.")
    run_subcommand(parser, {"generate": generate, "evaluate": evaluate})


if __name__ == "__main__":
    main()
