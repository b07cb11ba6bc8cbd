"""How long does the A/B report take on a realistic amount of logged traffic?

Synthetic conversations of the broadband flow's ``hybrid_vs_pure_llm`` experiment are written
straight into the tables (assignments from the real hash, stage events, turns with latencies,
compliance decisions with fallback variants), then the funnel SQL, the whole report and the
three files are timed. Also times the assignment hash.

    python benchmarks/bench_report.py --calls 20000 \
        --db sqlite:////tmp/bench.db --db postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, text

from engine.experiments import bucket_of, load_experiments
from engine.flow.loader import load_flow
from engine.report import build_report, write_report
from storage import Store
from storage import funnel as funnel_sql
from storage.models import ComplianceDecision, Conversation, StageEvent, Turn

ROOT = Path(__file__).resolve().parent.parent
FUNNEL = ["greeting", "identity", "needs", "pitch", "close", "converted"]
GO_ON = {"hybrid": [0.85, 0.8, 0.85, 0.45, 0.75], "pure_llm": [0.8, 0.72, 0.8, 0.42, 0.7]}


def synthesise(store: Store, calls: int, seed: int = 7) -> str:
    flow = load_flow(ROOT / "flows" / "broadband_en")
    experiment = load_experiments(ROOT / "flows" / "broadband_en", flow)["hybrid_vs_pure_llm"]
    rng = random.Random(seed)
    now = datetime.now(UTC)
    conversations, events, turns, audits = [], [], [], []
    for i in range(calls):
        assignment = experiment.assign(f"bench-{seed}-{i}")
        cid = uuid.uuid4().hex
        arm = assignment.arm
        reached = 1
        while reached < len(FUNNEL) and rng.random() < GO_ON[arm][reached - 1]:
            reached += 1
        stages = FUNNEL[:reached]
        if reached < len(FUNNEL):
            stages.append("hung_up" if rng.random() < 0.4 else "refused")
        for k, stage in enumerate(stages):
            events.append({"conversation_id": cid, "turn_index": k, "stage": stage})
            llm = stage in ("pitch", "objection") or (arm == "pure_llm" and k < reached)
            decision = None
            if llm:
                u = rng.random()
                decision = "approved" if u < 0.7 else "fallback" if u < 0.93 else "universal"
            source = "script" if decision is None else {"approved": "llm"}.get(decision, decision)
            total = (
                rng.lognormvariate(0.4, 0.5) if source == "script" else rng.lognormvariate(6.8, 0.3)
            )
            variant = None
            if decision == "fallback":
                variant = rng.choice([f"{stage}.fallback_a", f"{stage}.fallback_b"])
                if stage not in ("pitch", "objection"):
                    decision, variant = "universal", None
            turns.append(
                {
                    "conversation_id": cid,
                    "turn_index": k,
                    "user_text": None if k == 0 else "...",
                    "reply_text": "...",
                    "stage": stage,
                    "source": source,
                    "variant": variant,
                    "latencies": {"total_ms": total},
                    "created_at": now,
                }
            )
            if decision is not None:
                audits.append(
                    {
                        "conversation_id": cid,
                        "turn_index": k,
                        "stage": stage,
                        "decision": decision,
                        "variant": variant,
                        "threshold": 0.55,
                        "top_k": {},
                        "embedder": "minilm",
                        "library_hash": flow.library_hash,
                        "latencies": {},
                        "created_at": now,
                    }
                )
        final = stages[-1]
        conversations.append(
            {
                "id": cid,
                "flow_name": flow.name,
                "flow_version": flow.version,
                "customer_id": f"bench-{seed}-{i}",
                "arm": arm,
                "experiment": experiment.name,
                "assignment": assignment.record(),
                "slots": {},
                "stage": final,
                "stage_turns": 0,
                "turn_count": len(stages) - 1,
                "status": "ended",
                "outcome": flow.stages[final].outcome if flow.stages[final].is_end else None,
                "end_reason": "hangup" if final == "hung_up" else "transition",
                "created_at": now,
                "updated_at": now,
            }
        )
    with store.engine.begin() as conn:
        for table, rows in (
            (Conversation.__table__, conversations),
            (StageEvent.__table__, events),
            (Turn.__table__, turns),
            (ComplianceDecision.__table__, audits),
        ):
            for start in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[start : start + 5000])
    return experiment.name


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def fresh_database(url: str) -> str:
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return url
    base, name = url.rsplit("/", 1)
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--db", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ids = [f"customer-{i}" for i in range(200_000)]
    started = time.perf_counter()
    for unit in ids:
        bucket_of("bench-seed", unit)
    per_second = len(ids) / (time.perf_counter() - started)
    print(f"assignment hash: {per_second:,.0f} units/s ({1e6 / per_second:.1f} us each)")
    for url in args.db or [f"sqlite:///{tempfile.mkdtemp()}/bench.db"]:
        bench_database(url, args.calls, args.repeat)


def bench_database(url: str, calls: int, repeat: int) -> None:
    store = Store(fresh_database(url))
    started = time.perf_counter()
    name = synthesise(store, calls)
    load = time.perf_counter() - started
    counts_s, _ = timed(lambda: funnel_sql.collect(store.engine, name), repeat)
    report_s, report = timed(lambda: build_report(store, name), repeat)
    out = Path(tempfile.mkdtemp())
    write_s, _ = timed(lambda: write_report(report, out), repeat)
    turns = sum(r.n for r in report.latency) + calls
    size = (out / "report.html").stat().st_size // 1024
    print(
        f"{store.dialect}: {calls:,} calls, ~{turns:,} turns (load {load:.1f} s) | "
        f"funnel SQL {counts_s:.2f} s | build_report {report_s:.2f} s | "
        f"write html+md+json {write_s:.2f} s (html {size} KiB)"
    )
    store.close()


if __name__ == "__main__":
    main()
