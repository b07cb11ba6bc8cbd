"""Compliance match latency for one LLM reply against libraries of 100 / 2,000 / 20,000 scripts.

    python benchmarks/compliance_latency.py                  # MiniLM and tfidf-char, all sizes
    python benchmarks/compliance_latency.py --sizes 2000 --embedders minilm --queries 300

What is timed is the production path, ``ComplianceFilter.match`` on a real flow folder: the
draft's embedding (MiniLM on one thread, see ``engine/compliance/embedders.py``), the hard rules,
and the exact cosine top-3 over every eligible wording of the stage. Scripts are CLINC150
utterances (Larson et al., EMNLP 2019; CC BY 3.0; /work/shared/data/clinc150), one script each,
all approved for one llm stage; the drafts are other CLINC150 ``test`` utterances, never in the
library. The index is built (or read from the disk cache) before timing; the first 20 queries
warm up and are not counted. Wall time suffers when other processes share the cores; the CPU
time of the calling thread (the query runs on one thread) does not, so both are reported.

Prints a Markdown table; ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine.compliance import ComplianceFilter, create_embedder  # noqa: E402
from engine.flow.loader import load_flow  # noqa: E402

CLINC = Path(os.environ.get("CLINC150", "/work/shared/data/clinc150/data_full.json"))
MINI = ROOT / "tests" / "flows" / "mini"
WARMUP = 20


def clinc_texts(queries: int) -> tuple[list[str], list[str]]:
    """(library, drafts): the drafts are the last ``queries`` distinct test utterances, and the
    library every other distinct utterance (train, val, then test: 22,495 in all)."""
    data = json.loads(CLINC.read_text())
    texts = list(dict.fromkeys(t for split in ("train", "val", "test") for t, _ in data[split]))
    return texts[:-queries], texts[-queries:]


def make_flow(folder: Path, texts: list[str], embedder: str) -> Path:
    """The mini test flow with ``texts`` added as approved scripts of its llm stage."""
    shutil.copytree(MINI, folder)
    flow_yaml = folder / "flow.yaml"
    flow_yaml.write_text(
        flow_yaml.read_text().replace("embedder: tfidf-char", f"embedder: {embedder}")
    )
    scripts = yaml.safe_load((folder / "scripts.yaml").read_text())
    scripts["scripts"] += [
        {"id": f"bench.{i:05d}", "stages": ["pitch"], "act": f"act_{i % 40}", "text": text}
        for i, text in enumerate(texts)
    ]
    (folder / "scripts.yaml").write_text(yaml.safe_dump(scripts, allow_unicode=True, width=200))
    return folder


def measure(size: int, embedder_name: str, library: list[str], queries: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        flow = load_flow(make_flow(Path(tmp) / "flow", library[:size], embedder_name))
        started = time.perf_counter()
        flt = ComplianceFilter(flow, create_embedder(embedder_name))
        build_s = time.perf_counter() - started
        policy = flow.stages["pitch"].compliance
        slots = {"customer_name": "Alex", "agent_name": "Sam"}
        totals, cpus, embeds, matches = [], [], [], []
        for i, query in enumerate(queries):
            started, cpu = time.perf_counter(), time.thread_time()
            match = flt.match(query, policy, slots)
            elapsed = (time.perf_counter() - started) * 1000
            if i >= WARMUP:
                totals.append(elapsed)
                cpus.append((time.thread_time() - cpu) * 1000)
                embeds.append(match.embed_ms)
                matches.append(match.match_ms)
    return {
        "embedder": embedder_name,
        "scripts": size,
        "candidates": len(policy.candidates),
        "queries": len(totals),
        "index_build_s": round(build_s, 2),
        "index_from_cache": flt.index.from_cache,
        "p50_ms": float(np.percentile(totals, 50)),
        "p90_ms": float(np.percentile(totals, 90)),
        "p99_ms": float(np.percentile(totals, 99)),
        "cpu_p50_ms": float(np.percentile(cpus, 50)),
        "embed_p50_ms": float(np.percentile(embeds, 50)),
        "search_p50_ms": float(np.percentile(matches, 50)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,2000,20000")
    parser.add_argument("--embedders", default="minilm,tfidf-char")
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for building the index (0: default)."
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    library, queries = clinc_texts(args.queries)
    rows = []
    load_before = os.getloadavg()
    for embedder in args.embedders.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            row = measure(size, embedder, library, queries)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print(f"machine: {machine}\n")
    print(
        "| embedder | scripts | p50 ms | p90 ms | p99 ms | CPU p50 ms | embed p50 | search p50 |"
        " index build |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        build = "cached" if r["index_from_cache"] else f"{r['index_build_s']:.1f} s"
        print(
            f"| {r['embedder']} | {r['scripts']:,} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['cpu_p50_ms']:.1f} | {r['embed_p50_ms']:.1f} | "
            f"{r['search_p50_ms']:.2f} | {build} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
