"""Prometheus metrics of the service: turns, latencies by reply source, fallbacks, errors.

With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``salesbot serve --workers N`` does) so
every worker writes its samples there and ``/metrics`` from any worker reports the sum of all
(prometheus-client's multiprocess mode). Each :class:`Metrics` owns its registry, so building
two apps in one process (tests) does not clash.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Scripted turns take milliseconds, LLM turns seconds: buckets cover both.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
FALLBACK_SOURCES = frozenset({"fallback", "universal"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Counter(
            "salesbot_sessions_started", "Sessions opened over HTTP.", registry=r
        )
        self.turns = Counter(
            "salesbot_turns", "Turns answered, by reply source.", ["source"], registry=r
        )
        self.turn_seconds = Histogram(
            "salesbot_turn_seconds",
            "Engine time of a turn (classification, reply, database), by reply source.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "salesbot_fallbacks",
            "Turns answered with a fallback script (LLM draft rejected or backend failed).",
            ["stage", "source"],
            registry=r,
        )
        self.requests = Counter(
            "salesbot_http_requests",
            "HTTP requests, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "salesbot_http_request_seconds",
            "HTTP request time in the service, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "salesbot_http_errors",
            "Error responses, by error code (see the API's error bodies).",
            ["code"],
            registry=r,
        )

    def observe_turn(self, source: str, stage: str, seconds: float) -> None:
        self.turns.labels(source).inc()
        self.turn_seconds.labels(source).observe(seconds)
        if source in FALLBACK_SOURCES:
            self.fallbacks.labels(stage, source).inc()

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its path: session ids would make
    one time series per session). Pure ASGI, so it costs microseconds."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
