"""Load test of the HTTP service: concurrent scripted calls against `salesbot serve` on PostgreSQL.

Starts `salesbot serve` (N uvicorn workers) on 127.0.0.1 against a scratch PostgreSQL database,
opens SESSIONS concurrent sessions and sends TURNS scripted turns in each (purely scripted flow:
the figures measure the service and the database, not a language model), every request carrying
an Idempotency-Key and retried on a transport error, 5xx, 409 or 429. Then it counts in SQL that
every acknowledged turn is stored exactly once.

Pacing: with ``--rate R`` each session sends its turns on a fixed schedule so that all sessions
together offer R turns a second (a call-centre caller speaks every few seconds; a closed loop of
200 clients without pauses would measure queueing, not latency: Little's law). A turn whose
slot has passed is sent at once. ``--rate 0`` is a closed loop: the saturation throughput.
Latency is measured from the moment a request is sent to its response; with ``--kill`` the
end-to-end latency of a turn (first attempt to acknowledged answer, retries included) is
reported too. CPU per turn is read from /proc for the server processes, the database's
PostgreSQL backends and this process.

    python benchmarks/http_load.py --threads 5           # 200 x 20 at 500 turns/s, 2 workers
    python benchmarks/http_load.py --threads 5 --rate 0  # closed loop: maximum throughput
    python benchmarks/http_load.py --threads 5 --kill    # SIGKILL one worker halfway through

(``--threads N`` is also the size of each worker's database pool; see docs/benchmarks.md.)

Traffic goes to 127.0.0.1 only. Needs PostgreSQL (``--admin-url``) where it may create and drop
a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from scripted_load import ADMIN_URL, TEXTS
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pg_scratch import create_database, drop_database  # noqa: E402
from tests.processes import spawned_children  # noqa: E402

SALESBOT = Path(sys.executable).parent / "salesbot"
RETRYABLE = {409, 429, 500, 502, 503, 504}
CLIENT_SESSIONS = 10


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, acknowledged attempts
    end_to_end: list[float] = field(default_factory=list)  # first attempt to acknowledgement
    start_latencies: list[float] = field(default_factory=list)
    acknowledged: dict[str, dict[int, str]] = field(default_factory=dict)  # session -> idx -> text
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    wrong_index: int = 0
    turns_done: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_ticks(match) -> dict[int, int]:
    """utime + stime (clock ticks) of every process whose (pid, ppid, cmdline) matches."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if match(int(entry.name), int(fields[1]), cmdline):
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_snapshot(serve_pid: int, database: str) -> dict[str, dict[int, int]]:
    return {
        "server": cpu_ticks(lambda pid, ppid, _: serve_pid in (pid, ppid)),
        "postgres": cpu_ticks(  # backends that exit during the run take their CPU along
            lambda pid, ppid, cmd: (
                cmd.startswith("postgres:") and (f" {database} " in cmd or "walwriter" in cmd)
            )
        ),
    }


def cpu_ms_per_turn(before: dict, after: dict, client_s: float, turns: int) -> dict:
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for part in ("server", "postgres"):
        ticks = sum(t - before[part].get(pid, 0) for pid, t in after[part].items())
        out[part] = round(ticks / hz * 1000 / max(1, turns), 2)
    out["client"] = round(client_s * 1000 / max(1, turns), 2)
    return out


async def request(
    client: httpx.AsyncClient,
    stats: Stats,
    method: str,
    url: str,
    *,
    json_body: dict,
    key: str,
    deadline_s: float = 60.0,
) -> tuple[dict, float, float]:
    """Send until acknowledged; returns (body, attempt latency, end-to-end latency)."""
    first = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        sent = time.perf_counter()
        try:
            response = await client.request(
                method, url, json=json_body, headers={"Idempotency-Key": key}
            )
            if response.status_code < 300:
                now = time.perf_counter()
                return response.json(), now - sent, now - first
            reason = str(response.status_code)
            if response.status_code not in RETRYABLE:
                raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")
        except httpx.TransportError as exc:
            reason = type(exc).__name__
            if len(stats.transport_errors) < 10:
                stats.transport_errors.append(
                    f"{method} {url.split('/')[-1]} after {time.perf_counter() - sent:.2f}s: "
                    f"{exc!r}"
                )
        stats.retries += 1
        stats.retry_reasons[reason] = stats.retry_reasons.get(reason, 0) + 1
        if time.perf_counter() - first > deadline_s:
            raise RuntimeError(f"{method} {url}: gave up after {attempt} attempts ({reason})")
        await asyncio.sleep(min(0.5, 0.02 * attempt))


async def one_call(
    client: httpx.AsyncClient,
    stats: Stats,
    run: str,
    index: int,
    turns: int,
    interval: float,
    phase: float,
) -> None:
    try:
        body, latency, _ = await request(
            client,
            stats,
            "POST",
            "/v1/sessions",
            json_body={"customer_id": f"{run}-{index}", "slots": {"customer_name": "Alex"}},
            key=f"{run}-start-{index}",
        )
        stats.start_latencies.append(latency)
        session = body["session_id"]
        acknowledged = stats.acknowledged.setdefault(session, {0: body["reply"]["text"]})
        scheduled = time.perf_counter() + phase
        for k in range(1, turns + 1):
            if interval:
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                scheduled += interval
            said = "yes that's me" if k == 1 else TEXTS[(index + k) % len(TEXTS)]
            reply, latency, total = await request(
                client,
                stats,
                "POST",
                f"/v1/sessions/{session}/turns",
                json_body={"text": said},
                key=f"turn-{k}",
            )
            stats.latencies.append(latency)
            stats.end_to_end.append(total)
            stats.turns_done += 1
            if reply["turn_index"] != k:
                stats.wrong_index += 1
            acknowledged[reply["turn_index"]] = reply["text"]
    except RuntimeError as exc:
        stats.failures.append(str(exc))


async def killer(stats: Stats, serve_pid: int, at_turns: int, log: list[str]) -> None:
    while stats.turns_done < at_turns:
        await asyncio.sleep(0.01)
    pids = spawned_children(serve_pid)
    if not pids:
        log.append("no worker found to kill")
        return
    os.kill(pids[0], signal.SIGKILL)
    log.append(f"SIGKILL worker {pids[0]} after {stats.turns_done} acknowledged turns")


async def drive(
    args: argparse.Namespace,
    base_url: str,
    api_key: str,
    serve_pid: int,
    database: str,
    pg_sessions,
) -> dict:
    stats = Stats()
    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {api_key}"}
    interval = args.sessions / args.rate if args.rate else 0.0
    events: list[str] = []
    # httpx's pool does per-request work proportional to its connections: one client per
    # CLIENT_SESSIONS sessions keeps the load generator's CPU per request flat.
    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=30.0,
            limits=httpx.Limits(max_connections=CLIENT_SESSIONS),
        )
        for _ in range(math.ceil(args.sessions / CLIENT_SESSIONS))
    ]
    try:
        # Warm-up: connections and every worker's caches, not measured.
        await asyncio.gather(*(c.get("/readyz") for c in clients for _ in range(CLIENT_SESSIONS)))
        tasks = [
            one_call(
                clients[i // CLIENT_SESSIONS],
                stats,
                run,
                i,
                args.turns,
                interval,
                phase=(i / args.sessions) * interval,
            )
            for i in range(args.sessions)
        ]
        if args.kill:
            total = args.sessions * args.turns
            tasks.append(killer(stats, serve_pid, total // 2, events))
        sessions_before = pg_sessions()
        cpu_before = cpu_snapshot(serve_pid, database)
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_after = cpu_snapshot(serve_pid, database)
        await asyncio.sleep(1.5)  # PostgreSQL publishes session statistics within a second
        connections = pg_sessions() - sessions_before
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    client_s = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    cpu = cpu_ms_per_turn(cpu_before, cpu_after, client_s, len(stats.latencies))
    return {
        "stats": stats,
        "elapsed": elapsed,
        "events": events,
        "run": run,
        "cpu": cpu,
        "connections": connections,
    }


def verify(db_url: str, stats: Stats, turns: int, run: str) -> dict:
    """Count in SQL: every acknowledged turn stored once, nothing extra."""
    engine = create_engine(db_url)
    sessions = list(stats.acknowledged)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT conversation_id, turn_index, reply_text, idempotency_key FROM turns "
                "WHERE conversation_id = ANY(:ids)"
            ),
            {"ids": sessions},
        ).all()
        counts = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (conversation_id, turn_index)), "
                "count(DISTINCT (conversation_id, idempotency_key)) "
                "FILTER (WHERE idempotency_key IS NOT NULL) FROM turns "
                "WHERE conversation_id = ANY(:ids)"
            ),
            {"ids": sessions},
        ).one()
        bad_snapshots = conn.execute(
            text("SELECT count(*) FROM conversations WHERE id = ANY(:ids) AND turn_count <> :n"),
            {"ids": sessions, "n": turns},
        ).scalar_one()
        conversations = conn.execute(
            text("SELECT count(*) FROM conversations WHERE customer_id LIKE :p"),
            {"p": f"{run}-%"},
        ).scalar_one()
    engine.dispose()
    stored = {(r.conversation_id, r.turn_index): r.reply_text for r in rows}
    acked = {(s, i): t for s, by_index in stats.acknowledged.items() for i, t in by_index.items()}
    lost = sum(1 for k in acked if k not in stored)
    mismatched = sum(1 for k, t in acked.items() if k in stored and stored[k] != t)
    total, distinct_index, distinct_keys = counts
    return {
        "sessions_stored": conversations,
        "turn_rows": total,
        "expected_rows": len(sessions) * (turns + 1),
        "duplicated_rows": total - distinct_index,
        "distinct_idempotency_keys": distinct_keys,  # one per acknowledged caller turn
        "acknowledged_turns": len(acked),
        "acknowledged_lost": lost,
        "acknowledged_mismatched": mismatched,
        "unacknowledged_extra_rows": total - len(acked),
        "snapshots_with_wrong_turn_count": bad_snapshots,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0, help="turns/s offered; 0: closed")
    parser.add_argument("--kill", action="store_true", help="SIGKILL one worker halfway")
    parser.add_argument("--flow", default=str(ROOT / "tests" / "flows" / "scripted"))
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--threads", type=int, default=None, help="engine threads per worker")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    name = f"salesbot_http_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    db_url = create_database(admin, args.admin_url, name)
    api_key = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "SALESBOT_HTTP_API_KEYS": json.dumps(
            [{"name": "load", "key": api_key, "scopes": ["turns"], "rate": 1e6, "burst": 10**6}]
        ),
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        str(SALESBOT),
        "serve",
        args.flow,
        "--db",
        db_url,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while len(spawned_children(server.pid)) < args.workers or not _ready(base_url):
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not become ready")
            time.sleep(0.3)
        time.sleep(1.0)  # let the last worker finish its warm-up
        load_before = os.getloadavg()

        def pg_sessions() -> int:
            with admin.connect() as conn:
                return conn.execute(
                    text("SELECT sessions FROM pg_stat_database WHERE datname = :n"), {"n": name}
                ).scalar_one()

        result = asyncio.run(drive(args, base_url, api_key, server.pid, name, pg_sessions))
        stats: Stats = result["stats"]
        checks = verify(db_url, stats, args.turns, result["run"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        drop_database(admin, name)

    ms = 1000.0
    summary = {
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "workers": args.workers,
        "offered_rate": args.rate or "closed loop",
        "kill": args.kill,
        "events": result["events"],
        "elapsed_s": round(result["elapsed"], 2),
        "turns_per_s": round(len(stats.latencies) / result["elapsed"], 1),
        "turn_p50_ms": round(percentile(stats.latencies, 0.50) * ms, 1),
        "turn_p99_ms": round(percentile(stats.latencies, 0.99) * ms, 1),
        "turn_mean_ms": round(statistics.fmean(stats.latencies) * ms, 1)
        if stats.latencies
        else None,
        "end_to_end_p99_ms": round(percentile(stats.end_to_end, 0.99) * ms, 1),
        "end_to_end_max_ms": round(max(stats.end_to_end, default=0) * ms, 1),
        "start_p50_ms": round(percentile(stats.start_latencies, 0.50) * ms, 1),
        "retries": stats.retries,
        "retry_reasons": stats.retry_reasons,
        "transport_error_samples": stats.transport_errors,
        "errors": len(stats.failures),
        "error_samples": stats.failures[:5],
        "wrong_turn_index": stats.wrong_index,
        "cpu_ms_per_turn": result["cpu"],
        "postgres_connections_opened": result["connections"],
        "load_average_before": [round(x, 2) for x in load_before],
        "cpus": os.cpu_count(),
        "sql": checks,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    ok = (
        not stats.failures
        and checks["acknowledged_lost"] == 0
        and checks["duplicated_rows"] == 0
        and checks["acknowledged_mismatched"] == 0
        and checks["turn_rows"] == checks["expected_rows"]
        and checks["snapshots_with_wrong_turn_count"] == 0
    )
    print("integrity:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
