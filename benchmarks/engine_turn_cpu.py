"""CPU time per ``Engine.turn`` in-process (no HTTP), on SQLite and PostgreSQL.

Opens SESSIONS sessions of the scripted test flow and sends TURNS scripted turns in each, each
with an Idempotency-Key, from one thread. CPU is measured with ``time.thread_time`` (this
thread only) and, on PostgreSQL, from /proc for the scratch database's backends, so other load
on the machine changes the wall time but hardly the figures. Also reports the CPU of a retried
turn (idempotency hit) and of the intent classifier alone.

    python benchmarks/engine_turn_cpu.py                       # SQLite file and PostgreSQL
    python benchmarks/engine_turn_cpu.py --backend postgresql --profile 25
    python benchmarks/engine_turn_cpu.py --http     # through the FastAPI app too (no uvicorn)

With ``--http`` each turn is a request driven straight into the ASGI app (routing, API key,
validation, thread pool, metrics, JSON), concurrently for all sessions; the figure is
``time.process_time`` per turn (every thread of this process).

Needs PostgreSQL (``--admin-url``) where it may create and drop a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from scripted_load import ADMIN_URL, TEXTS
from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.engine import Engine  # noqa: E402
from tests.pg_scratch import create_database, drop_database  # noqa: E402

SCRIPTED = ROOT / "tests" / "flows" / "scripted"


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


KEY = "engine-turn-cpu-key-01"


def http_run(url: str, sessions: int, turns: int, rounds: int) -> list[float]:
    """Process CPU seconds per turn through the ASGI app, one value per round."""
    metrics_dir = tempfile.mkdtemp(prefix="salesbot-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # as `serve --workers N` runs it
    from engine.http.app import create_app
    from engine.http.settings import Settings

    key = {"name": "bench", "key": KEY, "scopes": ["turns"], "rate": 1e9, "burst": 10**9}
    settings = Settings(db_url=url, threads=5, api_keys=(key,))
    engine = Engine.from_flow_dir(SCRIPTED, url, pool_size=settings.threads)
    app = create_app(engine, settings)

    async def call(path: str, body: dict, headers: list) -> dict:
        raw = json.dumps(body).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"authorization", f"Bearer {KEY}".encode()),
                *headers,
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": raw, "more_body": False}]
        out: dict = {"body": b""}

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)  # no disconnect while the response is produced
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await app(scope, receive, send)
        if out.get("status") not in (200, 201):
            raise RuntimeError(f"{path}: {out.get('status')} {out['body'][:200]!r}")
        return json.loads(out["body"])

    async def main() -> list[float]:
        per_turn = []
        async with app.router.lifespan_context(app):
            for _ in range(rounds):
                body = {"customer_id": "bench", "slots": {"customer_name": "Alex"}}
                ids = []
                for _ in range(sessions):
                    ids.append((await call("/v1/sessions", body, []))["session_id"])
                for session in ids:
                    await call(f"/v1/sessions/{session}/turns", {"text": "yes"}, [])
                before = time.process_time()
                for i in range(1, turns):
                    await asyncio.gather(
                        *[
                            call(
                                f"/v1/sessions/{session}/turns",
                                {"text": TEXTS[(i + n) % len(TEXTS)]},
                                [(b"idempotency-key", f"k-{i}".encode())],
                            )
                            for n, session in enumerate(ids)
                        ]
                    )
                per_turn.append((time.process_time() - before) / (sessions * (turns - 1)))
        return per_turn

    try:
        return asyncio.run(main())
    finally:
        engine.store.close()
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]


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
    parser.add_argument("--http", action="store_true", help="through the ASGI app as well")
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
                url = create_database(admin, args.admin_url, database)
            try:
                results, classify = run(
                    url, args.sessions, args.turns, args.rounds, args.profile, database
                )
                http = http_run(url, args.sessions, args.turns, args.rounds) if args.http else []
            finally:
                if admin is not None:
                    drop_database(admin, database)
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
        if http:
            values = [v * 1000 for v in http]
            print(
                f"{backend:10s} HTTP turn (ASGI app, no server) process CPU "
                f"{statistics.median(values):.2f} ms (rounds: "
                f"{', '.join(f'{v:.2f}' for v in values)})"
            )


if __name__ == "__main__":
    main()
