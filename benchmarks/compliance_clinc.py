"""Compliance decision quality on CLINC150 used as a stand-in library, per embedder.

    python benchmarks/compliance_clinc.py                       # minilm and tfidf-char
    python benchmarks/compliance_clinc.py --embedders minilm --json out.json

Data: CLINC150 (Larson et al., "An Evaluation Dataset for Intent Classification and
Out-of-Scope Prediction", EMNLP 2019; CC BY 3.0), /work/shared/data/clinc150/data_full.json.

Protocol. Each intent is one script whose approved wordings are its ``train`` utterances. Every
fifth intent (sorted by name: 30 of 150) is left out of the library: its utterances are
near-misses, in the same task-oriented register as the library but meaning something no script
says, so they must fall back, like ``oos`` utterances. A draft is decided the way the filter
decides (exact cosine top-1 over all wordings, threshold, top-two margin between different
scripts) with the code the filter uses (``ScriptIndex``); it is correct when an in-library
utterance is accepted with its own intent's script, or when a near-miss / out-of-scope one falls
back. Two operating points are chosen on ``val`` + ``oos_val`` and then reported on ``test`` +
``oos_test`` (never used to choose anything): the (threshold, margin) with the best accuracy,
and the lowest threshold whose false-accept rate on val is at most 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_env import set_threads

from engine.compliance import create_embedder
from engine.compliance.calibration import Metrics, Pair, Scored, metrics
from engine.compliance.index import IndexEntry, ScriptIndex, as_vector

CLINC = Path(os.environ.get("CLINC150", "/work/shared/data/clinc150/data_full.json"))
GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # 0.05 .. 0.95
MARGINS = (0.0, 0.02, 0.05)
MAX_FALSE_ACCEPT = 0.05


def load() -> tuple[dict, list[str], set[str]]:
    data = json.loads(CLINC.read_text())
    intents = sorted({intent for _, intent in data["train"]})
    held_out = set(intents[4::5])
    return data, intents, held_out


def score(index: ScriptIndex, embedder, rows: list[list[str]], held_out: set[str]) -> list[Scored]:
    view = index.view(index.ids)
    everything = np.ones(len(index.ids), dtype=bool)
    texts = [text for text, _ in rows]
    vectors = embedder.embed_batch(texts)
    scored = []
    for i, (text, intent) in enumerate(rows):
        if intent == "oos":
            acceptable, category = frozenset(), "out_of_scope"
        elif intent in held_out:
            acceptable, category = frozenset(), "near_miss"
        else:
            acceptable, category = frozenset({intent}), "in_scope"
        top, margin = view.top(as_vector(vectors[i]), everything, 1)
        best, best_score = top[0]
        scored.append(
            Scored(Pair(i, "clinc", text, acceptable, category), best, best_score, margin, False)
        )
    return scored


def operating_points(val: list[Scored]) -> dict[str, tuple[float, float]]:
    table = [(t, m, metrics(val, t, m)) for m in MARGINS for t in GRID]
    best = max(table, key=lambda r: (r[2].accuracy, -r[0]))
    budget = [r for r in table if r[2].false_accept <= MAX_FALSE_ACCEPT]
    within = min(budget, key=lambda r: (r[2].fallback, r[0])) if budget else best
    return {"best accuracy on val": best[:2], "false accept <= 5% on val": within[:2]}


def report(scored: list[Scored], threshold: float, margin: float) -> dict:
    overall: Metrics = metrics(scored, threshold, margin)
    out = {"threshold": threshold, "margin": margin, "overall": overall.__dict__}
    for category in ("in_scope", "near_miss", "out_of_scope"):
        part = [s for s in scored if s.pair.category == category]
        out[category] = metrics(part, threshold, margin).__dict__
    return out


def run(embedder_name: str, data: dict, intents: list[str], held_out: set[str]) -> dict:
    embedder = create_embedder(embedder_name)
    library = [i for i in intents if i not in held_out]
    train: dict[str, list[str]] = {i: [] for i in library}
    for text, intent in data["train"]:
        if intent in train:
            train[intent].append(text)
    entries = [IndexEntry(i, i, tuple(train[i])) for i in library]
    started = time.perf_counter()
    index = ScriptIndex.build(entries, embedder, library_hash="clinc150:data_full:train")
    build_s = time.perf_counter() - started
    val = score(index, embedder, data["val"] + data["oos_val"], held_out)
    test = score(index, embedder, data["test"] + data["oos_test"], held_out)
    points = operating_points(val)
    return {
        "embedder": embedder_name,
        "library": {"scripts": len(entries), "wordings": sum(len(e.texts) for e in entries)},
        "index_build_s": round(build_s, 1),
        "index_from_cache": index.from_cache,
        "auroc": {"val": metrics(val, 0, 0).auroc, "test": metrics(test, 0, 0).auroc},
        "test": {name: report(test, t, m) for name, (t, m) in points.items()},
        "val": {name: report(val, t, m) for name, (t, m) in points.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedders", default="minilm,tfidf-char")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default).")
    args = parser.parse_args()
    set_threads(args.threads)
    data, intents, held_out = load()
    results = [run(name, data, intents, held_out) for name in args.embedders.split(",")]
    print(
        "| embedder | operating point (chosen on val) | threshold / margin | accuracy | "
        "in-scope correct | in-scope fallback | false accept: near-miss | false accept: oos | "
        "AUROC |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for name, rep in r["test"].items():
            ins, near, oos = rep["in_scope"], rep["near_miss"], rep["out_of_scope"]
            correct = 1 - ins["fallback"] - ins["wrong_script"]
            print(
                f"| {r['embedder']} | {name} | {rep['threshold']:.2f} / {rep['margin']:g} | "
                f"{rep['overall']['accuracy']:.1%} | {correct:.1%} | {ins['fallback']:.1%} | "
                f"{near['false_accept']:.1%} | {oos['false_accept']:.1%} | "
                f"{r['auroc']['test']:.3f} |"
            )
    print(
        "\n(test: 3,600 in-scope utterances of 120 library intents, 900 near-misses of 30 held-out "
        "intents, 1,000 oos_test)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
