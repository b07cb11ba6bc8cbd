"""Start `salesbot serve` as a real server process for the HTTP tests (127.0.0.1, a free port).

The server imports tests/http_plugin.py (``--plugin``), which registers the caller-driven fake
LLM backend, or talks to :class:`StubLLM`, an OpenAI-compatible server in the test process, with
the real ``openai`` backend. Everything else is the real service: uvicorn, the app, the engine,
the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.fakes import customer_words
from tests.processes import spawned_children

SALESBOT = Path(sys.executable).parent / "salesbot"
SCRIPTED = ROOT / "tests" / "flows" / "scripted"
MINI = ROOT / "tests" / "flows" / "mini"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes (children started by multiprocessing's spawn)."""
        return spawned_children(self.process.pid)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(
    flow: Path,
    db_url: str,
    keys: list[dict],
    log_path: Path,
    *,
    workers: int = 1,
    cache: Path,
    backend: tuple[str, ...] = ("--plugin", "tests.http_plugin", "--backend", "scripted-fake"),
    timeout_s: float = 180.0,
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SALESBOT_HTTP_API_KEYS": json.dumps(keys),
        "SALESBOT_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        str(SALESBOT),
        "serve",
        str(flow),
        "--db",
        db_url,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "debug",
        *backend,
    ]
    log = log_path.open("w")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while not (server.ready() and (workers == 1 or len(server.worker_pids()) == workers)):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not start:\n{server.log()[-3000:]}")
        time.sleep(0.2)
    return server


@contextlib.contextmanager
def serving(
    tmp_path_factory: pytest.TempPathFactory,
    flow: Path,
    db_url: str,
    keys: list[dict],
    log_path: Path,
    **options,
) -> Iterator[Server]:
    """:func:`start_server` with the session's model cache, stopped when the block ends: the
    body of every module-scoped server fixture."""
    cache = Path(os.environ.get("SALESBOT_TEST_CACHE") or tmp_path_factory.getbasetemp() / "cache")
    service = start_server(flow, db_url, keys, log_path, cache=cache, **options)
    try:
        yield service
    finally:
        service.stop()


class StubLLM:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, driven by what the caller
    said: ``[down]`` answers 500, ``[slow]`` answers after ``slow_s`` seconds, anything else
    answers ``reply`` at once. ``slow_done`` is set when a slow answer has been sent."""

    def __init__(self, reply: str, slow_s: float = 6.0):
        self.reply = reply
        self.slow_s = slow_s
        self.slow_done = threading.Event()
        self.calls = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                stub.calls += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                said = customer_words(body["messages"])
                if "[down]" in said:
                    self._send(500, {"error": {"message": "stub: down"}})
                    return
                if "[slow]" in said:
                    time.sleep(stub.slow_s)
                # The client may have given up waiting (its deadline): expected for [slow].
                with contextlib.suppress(OSError):
                    if body.get("stream"):
                        self._stream(stub.reply)
                    else:
                        message = {"role": "assistant", "content": stub.reply}
                        self._send(
                            200,
                            {
                                "choices": [{"message": message, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 12},
                            },
                        )
                if "[slow]" in said:
                    stub.slow_done.set()

            def _stream(self, text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for word in text.split(" "):
                    chunk = {"choices": [{"delta": {"content": word + " "}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
