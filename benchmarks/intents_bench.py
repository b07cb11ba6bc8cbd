"""Intent classifier benchmark: CLINC150 and BANKING77, both models, accuracy and speed.

    python benchmarks/intents_bench.py                       # both data sets, both models
    python benchmarks/intents_bench.py --dataset snips=PATH  # any other data set, same pipeline

Protocol (nothing is tuned on a test split):

* CLINC150 (Larson et al., EMNLP 2019; CC BY 3.0), data_full.json: train on ``train`` plus
  ``oos_train`` (an explicit out-of-scope class), choose C by top-1 accuracy on ``val``, fit the
  temperature and the rejection rule (threshold, margin) on ``val`` + ``oos_val``, report on
  ``test`` + ``oos_test``. In-scope accuracy counts a rejected in-scope query as an error, as in
  the paper's Table 2;
* BANKING77 (Casanueva et al., NLP4ConvAI 2020; CC BY 4.0): no validation split, so C is chosen
  on a stratified 10 % of train, then the model is refitted on all of train; test top-1 accuracy;
* speed on the CLINC150 test utterances: one utterance at a time (wall and CPU time per call,
  embedding caches off), batch throughput, training time (embeddings cached on disk; the
  embedding throughput is reported on its own).

Prints Markdown tables (pasted into docs/benchmarks.md); ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from intents import embeddings  # noqa: E402
from intents.classifier import IntentClassifier  # noqa: E402
from intents.datasets import Dataset, load_dataset  # noqa: E402
from intents.evaluation import evaluate, plot_sweep  # noqa: E402
from intents.rejection import OUT_OF_SCOPE, RejectionRule, score_rule  # noqa: E402

MODELS = ("tfidf", "tfidf+minilm")
C_GRID = (0.25, 0.5, 1.0)
LATENCY_CALLS = 1000
BATCH = 256
PUBLISHED = {
    "clinc150": [
        ("SVM, oos-train (Larson et al. 2019)", 91.0, 14.5),
        ("Rasa, oos-train (Larson et al. 2019)", 91.5, 45.3),
        ("MLP (USE), oos-threshold (Larson et al. 2019)", 93.4, 49.1),
        ("BERT, oos-threshold (Larson et al. 2019)", 96.2, 52.3),
    ],
    "banking77": [
        ("BERT-large (Casanueva et al. 2020)", 93.66),
        ("USE+ConveRT (Casanueva et al. 2020)", 93.36),
    ],
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def pct(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def top1(model: IntentClassifier, texts, labels) -> float:
    truth = np.asarray(labels, dtype=object)
    inside = truth != OUT_OF_SCOPE
    predicted = np.asarray(model.classes_, dtype=object)[
        model.decision_function([t for t, i in zip(texts, inside, strict=True) if i]).argmax(1)
    ]
    return float((predicted == truth[inside]).mean())


def tune(dataset: Dataset, model_name: str, grid, seed: int) -> tuple[IntentClassifier, dict]:
    """Fit once per C on train, calibrate + choose the rule on validation, keep the best C."""
    best, tried = None, {}
    for c in grid:
        started = time.perf_counter()
        model = IntentClassifier(
            model=model_name, C=c, threshold="auto", margin="auto", random_state=seed
        ).fit(
            list(dataset.train.texts),
            list(dataset.train.labels),
            X_val=list(dataset.val.texts),
            y_val=list(dataset.val.labels),
        )
        seconds = time.perf_counter() - started
        accuracy = top1(model, dataset.val.texts, dataset.val.labels)
        tried[c] = {"val_top1": accuracy, "train_seconds": seconds}
        print(f"  {model_name} C={c}: val top-1 {pct(accuracy)} ({seconds:.1f} s)", flush=True)
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model, seconds)
    assert best is not None
    return best[2], {"C": best[1], "grid": tried, "train_seconds": best[3]}


def speed(model: IntentClassifier, texts: list[str]) -> dict:
    """Per-utterance latency (caches off) and batch throughput."""
    if "minilm" in dict(model.features_.transformer_list):
        model.features_.set_params(minilm__cache=False)
        embeddings.clear_memory_cache()
    sample = texts[:LATENCY_CALLS]
    for text in sample[:20]:
        model.predict_one(text)
    wall, cpu = [], []
    for text in sample:
        w, c = time.perf_counter(), time.thread_time()
        model.predict_one(text)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - w) * 1000)
    started = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        model.predict_many(texts[i : i + BATCH])
    batch_seconds = time.perf_counter() - started
    if "minilm" in dict(model.features_.transformer_list):
        model.features_.set_params(minilm__cache=True)
    return {
        "p50_ms": float(np.percentile(wall, 50)),
        "p99_ms": float(np.percentile(wall, 99)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "cpu_p99_ms": float(np.percentile(cpu, 99)),
        "batch_per_s": len(texts) / batch_seconds,
        "batch_size": BATCH,
        "n_single": len(sample),
        "n_batch": len(texts),
    }


def embedding_throughput(texts: list[str]) -> dict:
    started = time.perf_counter()
    embeddings.embed("minilm", texts, cache=False)
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "seconds": seconds, "per_s": len(texts) / seconds}


def run_oos_dataset(name: str, dataset: Dataset, models, grid, seed, plots: Path | None) -> dict:
    out: dict = {"kind": "oos", "note": dataset.note, "models": {}}
    for model_name in models:
        if "minilm" in model_name:
            started = time.perf_counter()
            for split in (dataset.train, dataset.val, dataset.test):
                embeddings.embed("minilm", list(split.texts))
            out["embed_all_seconds"] = time.perf_counter() - started  # ~0 when cached on disk
        model, tuning = tune(dataset, model_name, grid, seed)
        report = evaluate(model, dataset.test.texts, dataset.test.labels)
        class_only = score_rule(
            model.predict_proba(list(dataset.test.texts)),
            model.classes_,
            dataset.test.labels,
            RejectionRule(0.0, 0.0),
        )
        result = {
            **tuning,
            "report": report.to_dict(),
            "oos_class_only": {
                "in_scope_accuracy": class_only.in_scope_accuracy,
                "oos_recall": class_only.oos_recall,
            },
            "val_calibration": model.calibration_,
            "speed": speed(model, list(dataset.test.texts)),
        }
        if plots:
            slug = model_name.replace("+", "_")
            result["plot"] = str(
                plot_sweep(
                    model,
                    dataset.test.texts,
                    dataset.test.labels,
                    plots / f"intents_{name}_{slug}.png",
                    title=f"{name} test ({model_name}): threshold sweep",
                )
            )
        out["models"][model_name] = result
        r = result["report"]
        print(
            f"  {name} {model_name}: in-scope {pct(r['in_scope_accuracy'])} / OOS recall "
            f"{pct(r['oos_recall'])} (rule {r['rule']})",
            flush=True,
        )
    return out


def run_closed_dataset(name: str, dataset: Dataset, models, grid, seed) -> dict:
    out: dict = {"kind": "closed", "note": dataset.note, "models": {}}
    everything = (
        list(dataset.train.texts) + list(dataset.val.texts),
        list(dataset.train.labels) + list(dataset.val.labels),
    )
    for model_name in models:
        _, tuning = tune(dataset, model_name, grid, seed)
        started = time.perf_counter()
        final = IntentClassifier(
            model=model_name,
            C=tuning["C"],
            threshold=0.0,
            margin=0.0,
            calibrate=False,
            random_state=seed,
        ).fit(*everything)
        seconds = time.perf_counter() - started
        report = evaluate(final, dataset.test.texts, dataset.test.labels)
        out["models"][model_name] = {
            **tuning,
            "final_train_seconds": seconds,
            "test_top1": report.top1_accuracy,
            "test_macro_f1": report.macro_f1,
        }
        print(f"  {name} {model_name}: test top-1 {pct(report.top1_accuracy)}", flush=True)
    return out


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}. Load average at start / end: "
             f"{results['load_start']} / {results['load_end']}.", ""]  # fmt: skip
    for name, res in results["datasets"].items():
        if res["kind"] == "oos":
            lines += [
                f"**{name}** (test: in-scope accuracy / OOS recall, %)",
                "",
                "| system | in-scope acc. | OOS recall | OOS precision | macro-F1 | ECE raw -> "
                "calibrated | rule (threshold, margin) | C |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for model_name, r in res["models"].items():
                rep = r["report"]
                rule = rep["rule"]
                lines.append(
                    f"| salesbot {model_name} | {pct(rep['in_scope_accuracy'])} | "
                    f"{pct(rep['oos_recall'])} | {pct(rep['oos_precision'])} | "
                    f"{pct(rep['macro_f1'])} | {pct(rep['ece_raw'])} -> "
                    f"{pct(rep['ece_calibrated'])} | {rule['threshold']:g}, {rule['margin']:g} | "
                    f"{r['C']:g} |"
                )
                only = r["oos_class_only"]
                lines.append(
                    f"| salesbot {model_name}, OOS class only (no threshold) | "
                    f"{pct(only['in_scope_accuracy'])} | {pct(only['oos_recall'])} | | | | | |"
                )
            for system, acc, rec in PUBLISHED.get(name, []):
                lines.append(f"| {system} | {acc} | {rec} | | | | | |")
            lines.append("")
        else:
            lines += [f"**{name}** (test top-1 accuracy, %)", "", "| system | accuracy | "
                      "macro-F1 | C |", "|---|---|---|---|"]  # fmt: skip
            for model_name, r in res["models"].items():
                lines.append(
                    f"| salesbot {model_name} | {pct(r['test_top1'])} | "
                    f"{pct(r['test_macro_f1'])} | {r['C']:g} |"
                )
            for system, acc in PUBLISHED.get(name, []):
                lines.append(f"| {system} | {acc} | | |")
            lines.append("")
    speed_rows = [
        (name, model_name, r)
        for name, res in results["datasets"].items()
        if res["kind"] == "oos"
        for model_name, r in res["models"].items()
    ]
    if speed_rows:
        lines += [
            "**Speed** (test utterances of the data set above; single = one `predict_one` call, "
            "embedding caches off)",
            "",
            "| data set | model | single p50 / p99 ms (wall) | single p50 / p99 ms (CPU) | "
            f"batch of {BATCH}, utterances/s | training s (chosen C) |",
            "|---|---|---|---|---|---|",
        ]
        for name, model_name, r in speed_rows:
            s = r["speed"]
            lines.append(
                f"| {name} | {model_name} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | "
                f"{s['cpu_p50_ms']:.2f} / {s['cpu_p99_ms']:.2f} | {s['batch_per_s']:.0f} | "
                f"{r['train_seconds']:.1f} |"
            )
        if "embedding" in results:
            e = results["embedding"]
            lines += ["", f"MiniLM embedding alone: {e['per_s']:.0f} texts/s ({e['texts']} "
                      f"texts, batch 64, no cache)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="Extra data set (JSON or CSV, see intents.datasets); repeatable.",
    )
    parser.add_argument("--only", help="Comma-separated data set names to run.")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--c-grid", default=",".join(str(c) for c in C_GRID))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Write every figure here.")
    parser.add_argument("--plots", help="Folder for threshold-sweep PNGs.")
    args = parser.parse_args(argv)

    root = Path(args.data_root)
    sources = {"clinc150": root / "clinc150" / "data_full.json", "banking77": root / "banking77"}
    for item in args.dataset:
        name, _, path = item.partition("=")
        sources[name] = Path(path)
    if args.only:
        sources = {k: v for k, v in sources.items() if k in args.only.split(",")}
    models = [m for m in args.models.split(",") if m]
    grid = [float(c) for c in args.c_grid.split(",")]
    plots = Path(args.plots) if args.plots else None

    results: dict = {
        "machine": machine(),
        "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "command": " ".join(["python", "benchmarks/intents_bench.py", *(argv or sys.argv[1:])]),
        "datasets": {},
    }
    for name, path in sources.items():
        print(f"{name}: {path}", flush=True)
        dataset = load_dataset(path, seed=args.seed)
        if dataset.test.n_oos:
            results["datasets"][name] = run_oos_dataset(
                name, dataset, models, grid, args.seed, plots
            )
        else:
            results["datasets"][name] = run_closed_dataset(name, dataset, models, grid, args.seed)
        if "tfidf+minilm" in models and "embedding" not in results:
            results["embedding"] = embedding_throughput(list(dataset.test.texts[:1000]))
    results["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print()
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
