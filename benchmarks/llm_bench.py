"""The LLM stage on a CPU: decision latency, cache reuse, precision, batching, memory, agreement.

    python benchmarks/llm_bench.py --json /tmp/llm_bench.json            # everything
    python benchmarks/llm_bench.py --precisions bf16 --skip agreement memory

What is measured (SmolLM2-135M-Instruct through the in-process backend, broadband_en prompts):

- decision latency: one LLM-stage decision = generation of exactly ``--tokens`` new tokens (the
  end-of-sequence token is suppressed so every sample decodes the same length) + the compliance
  filter with the real MiniLM embedder. Turn 1 (no earlier exchanges) and turn 6 (five earlier
  exchanges in the prompt), turn 6 with the previous turn's prompt cached (reuse) and without.
  The flow's pitch-stage sampling parameters, seeded. p50 and p90 over ``--repeats`` calls.
- batching: aggregate new tokens per second for 1, 8 and 32 sessions decoded together (turn-1
  prompts of different sessions, ``--tokens`` each), and the ratio to batch 1.
- memory: peak resident memory above the runtime baseline, measured in a fresh process per
  precision (8 sessions with 512-token prompts cached), next to the capacity planner's estimate.
- agreement: the 16 fixed conversation contexts of ``benchmarks/compliance_contexts.py``,
  decoded greedily (up to 48 tokens) per precision; how often the compliance filter picks the
  same script (or the same fallback decision) as with fp32, and how often the drafts are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from compliance_contexts import CONTEXTS, SLOTS, history  # noqa: E402

from engine.compliance import ComplianceFilter  # noqa: E402
from engine.compliance.embedders import MiniLMEmbedder  # noqa: E402
from engine.flow.loader import load_flow  # noqa: E402
from engine.llm.hf.backend import TransformersBackend  # noqa: E402
from engine.llm.hf.capacity import estimate, load_shape, measure_peak  # noqa: E402
from engine.llm.prompt import build_messages  # noqa: E402

FLOW = ROOT / "flows" / "broadband_en"
FOLLOW_UPS = [  # what a customer says in later pitch turns, with the approved reply sent
    ("we stream a lot of films and I work from home", "pitch.streaming"),
    ("how fast is it compared to what I have now?", "pitch.speed"),
    ("how much would it cost me?", "pitch.price"),
    ("would I need a new router?", "pitch.router"),
    ("how long would the contract be?", "pitch.contract"),
    ("and is there an installation fee?", "pitch.installation"),
    ("what happens if I change my mind?", "pitch.cooling_off"),
]


def load_average() -> float:
    return os.getloadavg()[0]


@contextmanager
def fixed_length(backend: TransformersBackend):
    """Suppress end-of-sequence so every sample decodes exactly max_new_tokens."""
    saved = backend._decoder.eos_ids
    backend._decoder.eos_ids = set()
    try:
        yield
    finally:
        backend._decoder.eos_ids = saved


def turn_messages(flow, turn: int, opening: int):
    """Turn ``turn`` (1-based) of a pitch conversation: turn - 1 earlier exchanges."""
    stage = flow.stages["pitch"]
    said = [FOLLOW_UPS[(opening + i) % len(FOLLOW_UPS)] for i in range(turn)]
    earlier = [(text, flow.render(script, SLOTS)) for text, script in said[:-1]]
    return build_messages(flow, stage, earlier, SLOTS, said[-1][0])


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p90": p90, "n": len(ordered)}


def decision_latency(backend, flow, compliance, tokens: int, repeats: int) -> dict:
    stage = flow.stages["pitch"]
    params = stage.generation.model_copy(update={"max_new_tokens": tokens, "deadline_s": 120})
    policy = stage.compliance
    cells = {"turn1": [], "turn6_reuse": [], "turn6_fresh": []}
    parts = {key: {"generate": [], "compliance": [], "prompt_tokens": []} for key in cells}

    def decide(messages, key, session, seed):
        started = time.perf_counter()
        generation = backend.generate(messages, params, seed=seed, session_key=session)
        generated = time.perf_counter()
        compliance.check(generation.text, "pitch", policy, session or "bench", SLOTS)
        done = time.perf_counter()
        assert generation.completion_tokens == tokens, generation
        cells[key].append(done - started)
        parts[key]["generate"].append(generated - started)
        parts[key]["compliance"].append(done - generated)
        parts[key]["prompt_tokens"].append(generation.prompt_tokens)
        return generation

    with fixed_length(backend):
        decide(turn_messages(flow, 1, 0), "turn1", None, 0)  # warm-up, dropped below
        for key in cells:
            cells[key].clear()
            for part in parts[key].values():
                part.clear()
        for i in range(repeats):
            decide(turn_messages(flow, 1, i), "turn1", None, i)
            session = f"bench-{i}-{time.perf_counter_ns()}"
            backend.generate(turn_messages(flow, 5, i), params, seed=i, session_key=session)
            generation = decide(turn_messages(flow, 6, i), "turn6_reuse", session, i)
            assert generation.cached_tokens > 0
            backend.release(session)
            decide(turn_messages(flow, 6, i), "turn6_fresh", None, i)
    return {
        key: {
            **quantiles(values),
            "generate_p50": statistics.median(parts[key]["generate"]),
            "compliance_p50": statistics.median(parts[key]["compliance"]),
            "prompt_tokens": statistics.median(parts[key]["prompt_tokens"]),
        }
        for key, values in cells.items()
    }


def batch_scaling(backend, flow, tokens: int, sizes: list[int]) -> dict:
    """Aggregate new tokens/s per batch size, end to end (prompt encoding included) and for the
    decode phase alone (after every row's first token), through the decoder itself."""
    from engine.llm.base import BatchItem

    params = flow.stages["pitch"].generation.model_copy(
        update={"max_new_tokens": tokens, "deadline_s": 600}
    )
    out = {}
    with fixed_length(backend):
        backend.generate_batch([(turn_messages(flow, 1, 0), params, 0)])  # warm-up
        for size in sizes:
            items = [BatchItem(turn_messages(flow, 1 + i % 3, i), params, i) for i in range(size)]
            rows = [backend._row(item, float("inf")) for item in items]
            started = time.perf_counter()
            first = None
            for _ in backend._decoder.steps(rows):
                first = first or time.perf_counter()
            seconds = time.perf_counter() - started
            generated = sum(len(row.generated) for row in rows)
            out[size] = {
                "seconds": seconds,
                "prefill_s": first - started,
                "prompt_tokens": sum(len(row.prompt) for row in rows),
                "tokens": generated,
                "tok_s": generated / seconds,
                "decode_tok_s": (generated - size) / (seconds - (first - started)),
            }
    for key in ("tok_s", "decode_tok_s"):
        base = out[sizes[0]][key]
        for size in sizes:
            out[size][key.replace("tok_s", "speedup")] = out[size][key] / base
    return out


def agreement_drafts(backend, flow, compliance) -> list[dict]:
    rows = []
    for context in CONTEXTS:
        stage = flow.stages[context.stage]
        params = stage.generation.model_copy(
            update={"do_sample": False, "max_new_tokens": 48, "deadline_s": 120}
        )
        messages = build_messages(flow, stage, history(flow, context), SLOTS, context.customer)
        text = backend.generate(messages, params).text
        result = compliance.check(text, context.stage, stage.compliance, "agree", SLOTS)
        script = result.script_id if result.decision == "approved" else None
        rows.append(
            {"context": context.name, "text": text, "decision": result.decision, "script": script}
        )
    return rows


def agreement(rows: dict[str, list[dict]]) -> dict:
    reference = rows["fp32"]
    out = {}
    for name, drafts in rows.items():
        same_script = sum(
            (a["decision"], a["script"]) == (b["decision"], b["script"])
            for a, b in zip(reference, drafts, strict=True)
        )
        same_text = sum(a["text"] == b["text"] for a, b in zip(reference, drafts, strict=True))
        approved = sum(d["decision"] == "approved" for d in drafts)
        out[name] = {
            "same_script": same_script / len(drafts),
            "same_draft": same_text / len(drafts),
            "approved": approved / len(drafts),
            "n": len(drafts),
        }
    return out


def memory(precisions: list[str], threads: int) -> dict:
    shape, _ = load_shape(None)
    out = {}
    for name in precisions:
        predicted = estimate(shape, dtype=name, context=512, sessions=8)
        measured = measure_peak(name, context=512, sessions=8, threads=threads)
        peak = measured["peak"] - measured["base"]
        out[name] = {
            "weights_mb": predicted.weights_bytes / 2**20,
            "estimate_mb": predicted.total_bytes / 2**20,
            "measured_mb": peak / 2**20,
            "loaded_mb": (measured["loaded"] - measured["base"]) / 2**20,
            "error": peak / predicted.total_bytes - 1,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--batch-precisions", default="fp32,bf16")
    parser.add_argument("--skip", nargs="*", default=[], choices=["batch", "memory", "agreement"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    flow = load_flow(FLOW)
    compliance = ComplianceFilter(flow, MiniLMEmbedder())
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "load_before": load_average(),
        "latency": {},
        "batch": {},
        "drafts": {},
    }
    for name in precisions:
        backend = TransformersBackend(dtype=name, threads=args.threads, cache_mb=512)
        backend.load()
        started = load_average()
        report["latency"][name] = decision_latency(
            backend, flow, compliance, args.tokens, args.repeats
        )
        report["latency"][name]["load_avg"] = (started + load_average()) / 2
        print(name, json.dumps(report["latency"][name], indent=1), flush=True)
        if "batch" not in args.skip and name in args.batch_precisions.split(","):
            sizes = [int(s) for s in args.batches.split(",")]
            report["batch"][name] = batch_scaling(backend, flow, args.tokens, sizes)
            print(name, "batch", json.dumps(report["batch"][name], indent=1), flush=True)
        if "agreement" not in args.skip:
            report["drafts"][name] = agreement_drafts(backend, flow, compliance)
        del backend
    if "agreement" not in args.skip and "fp32" in report["drafts"]:
        report["agreement"] = agreement(report["drafts"])
        print("agreement", json.dumps(report["agreement"], indent=1), flush=True)
    if "memory" not in args.skip:
        report["memory"] = memory(precisions, args.threads)
        print("memory", json.dumps(report["memory"], indent=1), flush=True)
    report["load_after"] = load_average()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
