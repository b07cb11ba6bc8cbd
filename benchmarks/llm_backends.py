"""All in-process LLM backends side by side, in one run (issue: llama.cpp backend).

For each backend: load time (the transformers GGUF conversion is cached beforehand, so this is
the warm start), first-token time and decode tokens/s on a fixed prompt, and the full LLM-stage
decision (generation + MiniLM compliance filter) for a reply of up to 40 tokens at turn 1 and
turn 6 of a call, with per-session prefix reuse. Greedy decoding, so the compliance decisions
of the backends can be compared on identical prompts.

    python benchmarks/llm_backends.py --sessions 5 --json /tmp/llm_backends.json
    python benchmarks/llm_backends.py --adapter flows/broadband_en/adapters/broadband_en \
        --decoding constrained --backends "transformers bf16" llamacpp

``--adapter``: a `salesbot tune` adapter, served by every backend (merged by transformers, the
GGUF LoRA in llama.cpp). ``--decoding constrained``: every decision chooses among the stage's
candidate scripts (the engine's strict-mode decoding; it stops once the prefix names one).
``--gap S``: seconds between a decision and the customer's next line, as in a call, where the
reply is spoken (a 15-word line takes ~4 s) and the customer answers; the benchmark tells the
backend which reply was sent (``prefill``, as the engine does) and waits. ``--gap 0``: turns
back to back, so a backend that encodes the reply ahead gains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compliance_contexts import CONTEXTS  # noqa: E402
from compliance_contexts import history as context_history  # noqa: E402

from engine.compliance import ComplianceFilter  # noqa: E402
from engine.compliance.embedders import MiniLMEmbedder  # noqa: E402
from engine.flow.generation import GenerationParams  # noqa: E402
from engine.flow.loader import load_flow  # noqa: E402
from engine.llm.hf.backend import TransformersBackend  # noqa: E402
from engine.llm.llamacpp_backend import LlamaCppBackend  # noqa: E402
from engine.llm.prompt import build_messages  # noqa: E402

FLOW = Path(__file__).resolve().parent.parent / "flows" / "broadband_en"
PARAMS = GenerationParams(do_sample=False, max_new_tokens=40, deadline_s=120)
SLOTS = {
    "customer_name": "Alex",
    "agent_name": "Sam",
    "company": "Brightline Broadband",
    "current_plan": "100 Mbps",
}
OPENING = [
    (None, "Hello, this is Sam from Brightline Broadband. Am I speaking with Alex?"),
    ("yes speaking", "Thanks. For security, could you confirm the first line of your address?"),
    ("it's 12 Oak Street", "How do you mostly use your internet at home?"),
]
CALLER = [
    "we stream a lot of films and I work from home",
    "how fast would it actually be",
    "and what does it cost per month",
    "is there a long contract",
    "do I need a new router",
    "hmm I'm not sure, it sounds expensive",
]
BOT_LINES = [  # the bot's side of the history: approved pitch lines, the same for every backend
    "With Fibre 500 the whole household can stream in HD at once without buffering.",
    "Fibre 500 gives you 500 Mbps, five times the speed of your current plan.",
    "It's £38 a month, £8 more than you pay now.",
    "It's an 18-month contract, and you have 14 days to change your mind.",
    "You'd get a free router upgrade and free installation.",
    "I understand. It's £8 a month more for five times the speed.",
]


BACKENDS = ("transformers fp32", "transformers bf16", "llamacpp")
DECODING = "free"  # or "constrained" (--decoding)


def backends(names, adapter: Path | None) -> dict[str, object]:
    options = {"adapter": adapter} if adapter else {}
    made = {
        "transformers fp32": lambda: TransformersBackend(dtype="fp32", **options),
        "transformers bf16": lambda: TransformersBackend(dtype="bf16", **options),
        "llamacpp": lambda: LlamaCppBackend(**options),
    }
    return {name: made[name]() for name in names}


def choices(stage) -> tuple[str, ...] | None:
    """The stage's candidate scripts, rendered, when decoding is constrained."""
    if DECODING != "constrained":
        return None
    return COMPLIANCE.candidate_texts(stage.compliance, SLOTS)


def first_token_and_decode(backend) -> tuple[float, float]:
    messages = build_messages(FLOW_OBJ, FLOW_OBJ.stages["pitch"], OPENING, SLOTS, CALLER[0])
    started = time.perf_counter()
    chunks = iter(backend.stream(messages, PARAMS, seed=0))
    first = next(chunks)
    first_token = time.perf_counter() - started
    text = first + "".join(chunks)
    total = time.perf_counter() - started
    tokens = max(1, backend_tokens(backend, text) - 1)
    return first_token, tokens / max(1e-9, total - first_token)


def backend_tokens(backend, text: str) -> int:
    if isinstance(backend, LlamaCppBackend):
        return len(backend._llm.tokenize(text.encode("utf-8"), add_bos=False))
    return len(backend._tokenizer(text, add_special_tokens=False)["input_ids"])


def call_decisions(
    backend, compliance, sessions: int, gap: float = 0.0
) -> tuple[list[float], list[float], list]:
    """Decision latency at turn 1 and turn 6 of ``sessions`` calls, and the chosen scripts.

    The bot's side of the history is a fixed approved line per turn (not what this backend's
    own decision was), so every backend sees the same prompts: a fixed prompt set.
    """
    turn1, turn6, chosen = [], [], []
    stage = FLOW_OBJ.stages["pitch"]
    for s in range(sessions):
        history = list(OPENING)
        key = f"bench-{s}"
        for t, line in enumerate(CALLER, start=1):
            said = f"{line} ({s})"  # each call's lines differ, so no call reuses another's
            messages = build_messages(FLOW_OBJ, stage, history, SLOTS, said)
            started = time.perf_counter()
            draft = backend.generate(
                messages, PARAMS, seed=0, session_key=key, choices=choices(stage)
            )
            result = compliance.check(draft.text, "pitch", stage.compliance, key, SLOTS)
            elapsed = time.perf_counter() - started
            (turn1 if t == 1 else turn6 if t == 6 else []).append(elapsed)
            chosen.append((f"call {s} turn {t}", accepted_script(result)))
            reply = BOT_LINES[t - 1]  # what this call goes on with (see above)
            backend.prefill([*messages, {"role": "assistant", "content": reply}], key)
            time.sleep(gap)
            history.append((said, reply))
        backend.release(key)
    return turn1, turn6, chosen


def accepted_script(result) -> str | None:
    """The approved script the draft was mapped to; None for any fallback."""
    return result.script_id if result.decision in ("approved", "pass") else None


def context_decisions(backend, compliance) -> list:
    """The compliance decision for each of the 16 fixed contexts of compliance_contexts.py."""
    chosen = []
    for context in CONTEXTS:
        stage = FLOW_OBJ.stages[context.stage]
        messages = build_messages(
            FLOW_OBJ, stage, context_history(FLOW_OBJ, context), SLOTS, context.customer
        )
        draft = backend.generate(messages, PARAMS, seed=0, choices=choices(stage))
        result = compliance.check(draft.text, context.stage, stage.compliance, "ctx", SLOTS)
        chosen.append((f"context {context.name}", accepted_script(result)))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--adapter", type=Path, help="a `salesbot tune` adapter folder")
    parser.add_argument("--decoding", default="free", choices=["free", "constrained"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between turns")
    args = parser.parse_args()
    global FLOW_OBJ, COMPLIANCE, DECODING
    FLOW_OBJ = load_flow(FLOW)
    DECODING = args.decoding
    compliance = COMPLIANCE = ComplianceFilter(FLOW_OBJ, MiniLMEmbedder())
    compliance.embedder.embed_batch(["warm up"])
    TransformersBackend().load()  # make sure the GGUF conversion cache exists: warm starts only
    rows, decided = [], {}
    print(
        f"adapter {args.adapter or 'none'}, decoding {DECODING}, gap {args.gap} s, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for name, backend in backends(args.backends, args.adapter).items():
        started = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - started
        first_token, decode = first_token_and_decode(backend)
        t1, t6, chosen = call_decisions(backend, compliance, args.sessions, args.gap)
        decided[name] = chosen + context_decisions(backend, compliance)
        rows.append(
            {
                "backend": name,
                "gap_s": args.gap,
                "load_s": round(load_s, 3),
                "first_token_s": round(first_token, 3),
                "decode_tok_s": round(decode, 1),
                "decision_turn1_p50_s": round(statistics.median(t1), 3),
                "decision_turn6_p50_s": round(statistics.median(t6), 3),
            }
        )
        print(rows[-1], flush=True)
    for row in rows:
        mine = decided[row["backend"]]
        for ref in ("transformers fp32", "transformers bf16"):
            if ref not in decided:
                row[f"same_decision_as_{ref.split()[1]}"] = "-"
                continue
            same = sum(a[1] == b[1] for a, b in zip(decided[ref], mine, strict=True))
            row[f"same_decision_as_{ref.split()[1]}"] = f"{same}/{len(mine)}"
        row["accepted"] = f"{sum(c[1] is not None for c in mine)}/{len(mine)}"
    print(
        "| backend | load s | first token s | decode tok/s | decision turn 1 p50 s | "
        "decision turn 6 p50 s | same decision as fp32 | same as bf16 | accepted |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['backend']} | {r['load_s']} | {r['first_token_s']} | {r['decode_tok_s']} | "
            f"{r['decision_turn1_p50_s']} | {r['decision_turn6_p50_s']} | "
            f"{r['same_decision_as_fp32']} | {r['same_decision_as_bf16']} | {r['accepted']} |"
        )
    if args.json:
        args.json.with_suffix(".decisions.json").write_text(json.dumps(decided, indent=2))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
