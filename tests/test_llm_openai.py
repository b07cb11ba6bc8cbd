"""The OpenAI-compatible backend against a real local HTTP server (no mocks of httpx).

The server runs in a thread and behaves as each test asks: answer, fail with 500 or 400, hang,
stream server-sent events. A hanging or failing endpoint must end in a fallback reply within the
stage's deadline, never an exception, and the circuit breaker must stop calling a dead server.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.compliance import ComplianceFilter
from engine.compliance.embedders import CharNgramEmbedder
from engine.engine import Engine
from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams
from engine.flow.loader import load_flow
from engine.llm import BackendError, DeadlineExceeded, create_backend
from engine.llm.openai_backend import OpenAIBackend
from intents import load_or_train
from storage import Store
from tests.conftest import ROOT

PARAMS = GenerationParams(max_new_tokens=20, deadline_s=2.0, stop=("\n",))
FAST = dict(retries=2, backoff_s=0.01, backoff_max_s=0.02, connect_timeout_s=0.5)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


class FakeLLMServer:
    """A chat-completions server whose next answers a test scripts (``plan``)."""

    def __init__(self):
        self.plan: list[str] = []  # per request: ok | 500 | 400 | hang | stream | garbage
        self.default = "ok"
        self.requests: list[dict] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, **payload})
                mode = server.plan.pop(0) if server.plan else server.default
                if mode == "hang":
                    server.release.wait(30)
                    return
                if mode in {"500", "400"}:
                    self._send(int(mode), b'{"error": "scripted failure"}')
                elif mode == "garbage":
                    self._send(200, b"not json")
                elif mode == "stream":
                    self._stream(["Fibre ", "500 ", "is ", "faster."])
                else:
                    said = payload["messages"][-1]["content"]
                    body = {
                        "choices": [
                            {"message": {"content": f" echo: {said} "}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3},
                    }
                    self._send(200, json.dumps(body).encode())

            def _send(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, pieces: list[str]):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in pieces:
                    event = {"choices": [{"delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    srv = FakeLLMServer()
    yield srv
    srv.close()


def backend_for(server: FakeLLMServer, **options) -> OpenAIBackend:
    return OpenAIBackend(base_url=server.url, model="smollm2", **{**FAST, **options})


def test_a_reply_and_the_request_it_was_made_from(server):
    backend = backend_for(server)
    out = backend.generate(MESSAGES, PARAMS, seed=42)
    assert out.text == "echo: hi"
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (11, 3, "stop")
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["model"] == "smollm2" and sent["messages"] == MESSAGES
    assert sent["max_tokens"] == 20 and sent["seed"] == 42 and sent["stop"] == ["\n"]
    assert sent["temperature"] == 0.7 and sent["top_k"] == 50
    assert sent["repetition_penalty"] == 1.2
    greedy = GenerationParams(do_sample=False, repetition_penalty=1.0)
    backend_for(server, send_extras=False).generate(MESSAGES, greedy)
    assert server.requests[1]["temperature"] == 0.0
    assert "top_k" not in server.requests[1] and "repetition_penalty" not in server.requests[1]


def test_5xx_is_retried_with_backoff_and_then_succeeds(server):
    server.plan = ["500", "500"]
    assert backend_for(server).generate(MESSAGES, PARAMS).text == "echo: hi"
    assert len(server.requests) == 3


def test_persistent_5xx_fails_after_the_bounded_retries(server):
    server.default = "500"
    with pytest.raises(BackendError, match="HTTP 500"):
        backend_for(server, retries=1).generate(MESSAGES, PARAMS)
    assert len(server.requests) == 2


def test_4xx_and_malformed_replies_fail_at_once(server):
    server.plan = ["400", "garbage"]
    backend = backend_for(server)
    with pytest.raises(BackendError, match="HTTP 400"):
        backend.generate(MESSAGES, PARAMS)
    with pytest.raises(BackendError, match="unexpected chat-completions response"):
        backend.generate(MESSAGES, PARAMS)
    assert len(server.requests) == 2


def test_a_hanging_server_fails_at_the_deadline_not_at_the_read_timeout(server):
    server.default = "hang"
    backend = backend_for(server, timeout_s=30)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        backend.generate(MESSAGES, PARAMS.model_copy(update={"deadline_s": 0.5}))
    # Bounded by the 0.5 s deadline (slack for a loaded machine), not the 30 s read timeout.
    assert time.perf_counter() - started < 3.0


def test_the_circuit_opens_after_repeated_failures_and_skips_the_server(server):
    server.default = "500"
    backend = backend_for(server, retries=0, breaker_failures=2, breaker_reset_s=60)
    for _ in range(2):
        with pytest.raises(BackendError, match="HTTP 500"):
            backend.generate(MESSAGES, PARAMS)
    assert backend.breaker.state == "open"
    with pytest.raises(BackendError, match="circuit open"):
        backend.generate(MESSAGES, PARAMS)
    assert len(server.requests) == 2  # the open circuit never called the server


def test_the_circuit_lets_one_trial_through_after_the_pause(server):
    server.default = "500"
    backend = backend_for(server, retries=0, breaker_failures=1, breaker_reset_s=0.05)
    with pytest.raises(BackendError):
        backend.generate(MESSAGES, PARAMS)
    time.sleep(0.1)
    server.default = "ok"
    assert backend.generate(MESSAGES, PARAMS).text == "echo: hi"
    assert backend.breaker.state == "closed"


def test_streaming_yields_the_server_sent_chunks(server):
    server.plan = ["stream"]
    chunks = list(backend_for(server).stream(MESSAGES, PARAMS))
    assert chunks == ["Fibre ", "500 ", "is ", "faster."]
    assert server.requests[0]["stream"] is True


def test_batch_sends_concurrent_requests_and_reports_failures_per_item(server):
    server.plan = ["ok", "400", "ok"]
    items = [([{"role": "user", "content": f"q{i}"}], PARAMS, i) for i in range(3)]
    results = backend_for(server, retries=0).generate_batch(items)
    assert len(results) == 3 and len(server.requests) == 3
    assert sorted(r.finish_reason for r in results) == ["error", "stop", "stop"]
    assert {r.text for r in results if r.finish_reason == "stop"} <= {
        "echo: q0",
        "echo: q1",
        "echo: q2",
    }


def test_registry_builds_it_and_names_unknown_options():
    backend = create_backend("openai", base_url="http://127.0.0.1:9/v1", model="m", retries=0)
    assert (
        isinstance(backend, OpenAIBackend)
        and backend.url == "http://127.0.0.1:9/v1/chat/completions"
    )
    with pytest.raises(SalesbotError, match="unknown option.*timeout"):
        create_backend("openai", timeout=3)


# -- through the engine: the caller hears the fallback within the deadline ------------------------


def deadline_flow(tmp_path: Path, deadline_s: float) -> Path:
    """The mini test flow with a short deadline on its llm stage (set in YAML)."""
    folder = tmp_path / "mini"
    shutil.copytree(ROOT / "tests" / "flows" / "mini", folder)
    flow_yaml = folder / "flow.yaml"
    text = flow_yaml.read_text()
    old = "generation: {max_new_tokens: 24}"
    assert old in text
    flow_yaml.write_text(
        text.replace(old, f"generation: {{max_new_tokens: 24, deadline_s: {deadline_s}}}")
    )
    return folder


@pytest.mark.parametrize("failure", ["hang", "500", "refused"])
def test_a_dead_or_slow_endpoint_gives_the_fallback_within_the_deadline(
    failure, server, tmp_path, db_url
):
    flow = load_flow(deadline_flow(tmp_path, 1.0))
    assert flow.stages["pitch"].generation.deadline_s == 1.0
    server.default = failure
    url = "http://127.0.0.1:9/v1" if failure == "refused" else server.url  # nothing on port 9
    backend = OpenAIBackend(base_url=url, model="m", timeout_s=30, retries=5, backoff_s=0.05)
    engine = Engine(
        flow,
        load_or_train({k: list(v) for k, v in flow.intents.items()}, language=flow.language),
        backend,
        ComplianceFilter(flow, CharNgramEmbedder()),
        Store(db_url),
    )
    opening = engine.start("deadline-1", {"customer_name": "Alex"})
    started = time.perf_counter()
    reply = engine.turn(opening.session_id, "yes that's me")
    assert time.perf_counter() - started < 4.0  # 1 s deadline, slack for a loaded machine
    assert reply.stage == "pitch" and reply.source == "fallback"
    assert reply.text in {
        flow.render(s, {"customer_name": "Alex", "agent_name": "Sam"})
        for s in ("pitch.fallback_a", "pitch.fallback_b")
    }
    audit = engine.store.compliance_decisions(opening.session_id)
    assert audit[-1].decision == "fallback" and audit[-1].error
