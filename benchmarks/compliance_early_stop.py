"""Early stop: tokens saved, and the share of decisions identical to full generation.

    python benchmarks/compliance_early_stop.py replay benchmarks/data/compliance_drafts.json
    python benchmarks/compliance_early_stop.py live --contexts 8

``replay`` takes real SmolLM2 drafts (written by ``compliance_prompt.py generate``; or the
texts of a labelled pairs file, ``--variants paraphrase`` for the good ones), cuts each into the
chunks the TransformersBackend's ``stream`` yields (one decoded token at a time) and feeds them
to ``stream_and_match`` exactly as the engine does, for several settings of ``stable_checks``
(k), the check interval and the lead over the threshold. Stopping early never changes the
tokens already generated (same seed, same prefix), so the decision on the prefix can be compared
with the decision on the whole draft: "identical" means the same script, or a fallback in both.
Tokens saved are the generated tokens that early stop did not need.

``live`` runs the real ``TransformersBackend.stream`` twice per draft with the same seed: once
to the end, once through ``stream_and_match``; it reports wall time for both and checks that
the live early-stopped text is a prefix of the full one (that the replay is faithful).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_env import ROOT, run_subcommand, subcommand_parser
from compliance_contexts import CONTEXTS, SLOTS

from engine.compliance import ComplianceFilter, create_embedder, stream_and_match
from engine.flow.loader import load_flow

FLOW_DIR = ROOT / "flows" / "broadband_en"
SETTINGS = [(k, every, lead) for k in (1, 2, 3) for every in (2, 3, 4) for lead in (0.0, 0.05)]


def token_chunks(tokenizer, text: str) -> list[str]:
    """``text`` as a token stream: the decoded text added by each token."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    chunks, emitted = [], ""
    for i in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:i], skip_special_tokens=True)
        if decoded.endswith("\ufffd"):
            continue
        chunks.append(decoded[len(emitted) :])
        emitted = decoded
    return chunks


def replay(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from engine.llm.hf.models import converted_dir, default_model_path

    tokenizer = AutoTokenizer.from_pretrained(converted_dir(default_model_path()))
    flow = load_flow(FLOW_DIR)
    flt = ComplianceFilter(flow, create_embedder("minilm"))
    contexts = {c.name: c for c in CONTEXTS}
    if args.drafts.suffix == ".csv":  # a pairs file: its texts as if the LLM had drafted them
        from engine.compliance.calibration import load_pairs

        stage_context = {c.stage: c.name for c in CONTEXTS}
        drafts = [
            {"context": stage_context[p.stage], "text": p.text, "variant": p.category}
            for p in load_pairs(args.drafts, flow)
        ]
    else:
        drafts = json.loads(args.drafts.read_text())["drafts"]
    if args.variants:
        drafts = [d for d in drafts if d["variant"] in args.variants.split(",")]
    cache: dict[str, object] = {}

    def matcher(policy):
        def run(text: str):
            key = (id(policy), text)
            if key not in cache:
                cache[key] = flt.match(text, policy, SLOTS)
            return cache[key]

        return run

    full = []
    for d in drafts:
        policy = flow.stages[contexts[d["context"]].stage].compliance
        chunks = token_chunks(tokenizer, d["text"])
        full.append((d, policy, chunks, matcher(policy)("".join(chunks).strip()).accepted(policy)))
    accepted_full = sum(a is not None for *_, a in full)
    print(f"{len(full)} drafts, {accepted_full} accepted by the full-draft decision\n")
    print(
        "| k (stable checks) | every (words) | lead | identical | stopped early | tokens saved "
        "(all drafts) | tokens saved (stopped ones) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for k, every, lead in SETTINGS:
        identical = stopped = total = saved = saved_stopped = total_stopped = 0
        for _d, policy, chunks, decision in full:
            drafted = stream_and_match(
                iter(chunks),
                matcher(policy),
                policy,
                stable_checks=k,
                every_words=every,
                lead=lead,
            )
            early = drafted.match.accepted(policy)
            identical += early == decision
            total += len(chunks)
            saved += len(chunks) - drafted.chunks
            if drafted.stopped_early:
                stopped += 1
                total_stopped += len(chunks)
                saved_stopped += len(chunks) - drafted.chunks
        n = len(full)
        row = {
            "k": k,
            "every": every,
            "lead": lead,
            "identical": identical / n,
            "stopped": stopped / n,
            "tokens_saved": saved / total,
            "tokens_saved_stopped": saved_stopped / total_stopped if total_stopped else 0.0,
        }
        results.append(row)
        print(
            f"| {k} | {every} | {lead:g} | {row['identical']:.1%} | {row['stopped']:.1%} | "
            f"{row['tokens_saved']:.1%} | {row['tokens_saved_stopped']:.1%} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def live(args: argparse.Namespace) -> None:
    from compliance_contexts import history

    from engine.llm.hf.backend import TransformersBackend
    from engine.llm.prompt import build_messages

    flow = load_flow(FLOW_DIR)
    flt = ComplianceFilter(flow, create_embedder("minilm"))
    backend = TransformersBackend()
    backend.load()
    rows = []
    for context in CONTEXTS[: args.contexts]:
        stage = flow.stages[context.stage]
        policy = stage.compliance
        messages = build_messages(flow, stage, history(flow, context), SLOTS, context.customer)
        params = stage.generation.model_copy(update={"deadline_s": 3600})
        started = time.perf_counter()
        full_text = "".join(backend.stream(messages, params, seed=args.seed)).strip()
        full_s = time.perf_counter() - started
        decision = flt.match(full_text, policy, SLOTS).accepted(policy)
        started = time.perf_counter()
        drafted = stream_and_match(
            backend.stream(messages, params, seed=args.seed),
            lambda text, p=policy: flt.match(text, p, SLOTS),
            policy,
            stable_checks=flow.early_stop,
        )
        early_s = time.perf_counter() - started
        rows.append(
            {
                "context": context.name,
                "full_s": full_s,
                "early_s": early_s,
                "stopped": drafted.stopped_early,
                "identical": drafted.match.accepted(policy) == decision,
                "prefix": full_text.startswith(drafted.text),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{len(rows)} drafts: {sum(r['stopped'] for r in rows)} stopped early, "
        f"{sum(r['identical'] for r in rows)} identical decisions, "
        f"{sum(r['prefix'] for r in rows)} early texts are prefixes of the full draft; "
        f"median wall {statistics.median(r['full_s'] for r in rows):.2f} s full vs "
        f"{statistics.median(r['early_s'] for r in rows):.2f} s with early stop"
    )


def main() -> None:
    parser, (rep, liv) = subcommand_parser(__doc__.splitlines()[0], "replay", "live")
    rep.add_argument("drafts", type=Path)
    rep.add_argument(
        "--variants", default=None, help="Only these prompt variants / pair categories (a,b)."
    )
    rep.add_argument("--json", type=Path, default=None)
    liv.add_argument("--contexts", type=int, default=8)
    liv.add_argument("--seed", type=int, default=1)
    run_subcommand(parser, {"replay": replay, "live": live})


if __name__ == "__main__":
    main()
