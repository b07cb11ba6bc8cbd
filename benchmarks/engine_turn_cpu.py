"""CPU time per ``Engine.turn`` in-process (no HTTP), on SQLite and PostgreSQL.

Opens SESSIONS sessions of the scripted test flow and sends TURNS scripted turns in each, each
with an Idempotency-Key, from one thread. CPU is measured with ``time.thread_time`` (this
thread only) and, on PostgreSQL, from /proc for the scratch database's backends, so other load
on the machine changes the wall time but hardly the figures. Also reports the CPU of a retried
turn (idempotency hit) and of the intent classifier alone.

    python benchmarks/engine_turn_cpu.py                       # SQLite file and PostgreSQL
    python benchmarks/engine_turn_cpu.py --backend postgresql --profile 25

Needs PostgreSQL (``--admin-url``) where it may create and drop a scratch database.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.engine import Engine  # noqa: E402

SCRIPTED = ROOT / "tests" / "flows" / "scripted"
TEXTS = [
    "how much is it",
    "how fast is it",
    "how long is the contract",
    "are you a robot",
    "what does it cost",
    "what speed do I get",
    "am I tied in",
    "is this a bot",
]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def backend_ticks(database: str) -> int:
    """utime + stime (clock ticks) of the PostgreSQL backends connected to ``database``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not (cmdline.startswith("postgres:") and f" {database} " in cmdline):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def run(url: str, sessions: int, turns: int, rounds: int, profile: int, database: str | None):
    engine = Engine.from_flow_dir(SCRIPTED, url)
    engine.classifier.predict_one("hello")  # warm
    hz = os.sysconf("SC_CLK_TCK")
    results = []
    profiler = cProfile.Profile() if profile else None
    for _ in range(rounds):
        ids = [
            engine.start(f"bench-{uuid.uuid4().hex[:8]}", {"customer_name": "Alex"}).session_id
            for _ in range(sessions)
        ]
        for session in ids:
            engine.turn(session, "yes", idempotency_key="k-0")  # greeting -> questions
        pg_before = backend_ticks(database) if database else 0
        cpu_before, wall_before = time.thread_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for i in range(1, turns):
            for n, session in enumerate(ids):
                engine.turn(session, TEXTS[(i + n) % len(TEXTS)], idempotency_key=f"k-{i}")
        if profiler:
            profiler.disable()
        cpu = time.thread_time() - cpu_before
        wall = time.perf_counter() - wall_before
        pg = (backend_ticks(database) - pg_before) / hz if database else 0.0
        count = sessions * (turns - 1)
        # Retries of turns already stored: the idempotency hit path.
        retry_before = time.thread_time()
        for session in ids:
            engine.turn(session, "how much is it", idempotency_key="k-1")
        retry = time.thread_time() - retry_before
        results.append((cpu / count, pg / count, wall / count, retry / len(ids)))
    before = time.thread_time()
    for i in range(2000):
        engine.classifier.predict_one(TEXTS[i % len(TEXTS)])
    classify = (time.thread_time() - before) / 2000
    engine.store.close()
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
    return results, classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print N functions")
    parser.add_argument("--admin-url", default=os.environ.get("SALESBOT_TEST_PG_URL", ADMIN_URL))
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        database = None
        admin = None
        with tempfile.TemporaryDirectory() as folder:
            if backend == "sqlite":
                url = f"sqlite:///{folder}/bench.db"
            else:
                database = f"salesbot_cpu_{uuid.uuid4().hex[:8]}"
                admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{database}"'))
                url = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
            try:
                results, classify = run(
                    url, args.sessions, args.turns, args.rounds, args.profile, database
                )
            finally:
                if admin is not None:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
                    admin.dispose()
        engine_ms = [r[0] * 1000 for r in results]
        pg_ms = [r[1] * 1000 for r in results]
        wall_ms = [r[2] * 1000 for r in results]
        retry_ms = [r[3] * 1000 for r in results]
        print(
            f"{backend:10s} Engine.turn CPU {statistics.median(engine_ms):.2f} ms "
            f"(rounds: {', '.join(f'{v:.2f}' for v in engine_ms)}); "
            f"database CPU {statistics.median(pg_ms):.2f} ms; "
            f"wall {statistics.median(wall_ms):.2f} ms; "
            f"retried turn CPU {statistics.median(retry_ms):.2f} ms; "
            f"classifier alone {classify * 1000:.2f} ms; "
            f"load average {Path('/proc/loadavg').read_text().split()[0]}"
        )


if __name__ == "__main__":
    main()
