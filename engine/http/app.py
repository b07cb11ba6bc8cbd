"""The HTTP service: a thin FastAPI layer over one :class:`~engine.engine.Engine`.

Routes only parse, call the engine and format; every turn goes through ``Engine.turn``, the same
code path as the CLI and the simulator. Engine calls block (database, model inference), so they
run in a thread pool and the event loop keeps answering other requests meanwhile. Workers hold
no session state: any worker can serve any turn, and turns of one session are serialised by the
engine's row lock, so replicas scale behind any load balancer.

``create_app(engine, settings)`` builds the app; ``app_from_env`` is the factory uvicorn calls
in each worker process (``salesbot serve`` sets the environment it reads).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at run
# time, and some of their types are built from the settings inside create_app.

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any, Literal

import anyio
from fastapi import Body, Depends, FastAPI, Header, Path, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool

from engine.engine import Engine
from engine.http import errors
from engine.http.auth import ApiKey, KeyRing, load_keys
from engine.http.errors import ApiError, ErrorBody
from engine.http.limits import BodyLimitMiddleware
from engine.http.metrics import Metrics, MetricsMiddleware
from engine.http.ratelimit import RateLimiter, retry_after
from engine.http.schemas import (
    IDEMPOTENCY_KEY,
    NAME,
    SESSION_ID,
    EndRequest,
    Health,
    ReplyOut,
    SessionCreated,
    SessionOut,
    session_out,
    slot_values,
    start_request_model,
    turn_request_model,
)
from engine.http.settings import Settings, SettingsError, import_plugins
from engine.idempotency import derived_session_id

log = logging.getLogger("salesbot.http")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No API key, or an unknown one.",
        403: "The key lacks the scope this route needs.",
        404: "No such session (or experiment).",
        409: "The session has ended or its turns collided; see `error.code`.",
        413: "Request body over the size limit.",
        422: "Malformed JSON or a field out of its limits (`error.details` locates it), or an "
        "Idempotency-Key reused for another request (`idempotency_key_reused`).",
        429: "Rate limit of this key exceeded; retry after `Retry-After` seconds.",
        503: "Database unreachable; nothing was written; retry after `Retry-After` seconds.",
    }
    retry = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
    return {
        status: {
            "model": ErrorBody,
            "description": described[status],
            **({"headers": retry} if status in (429, 503) else {}),
        }
        for status in statuses
    }


V1_ERRORS = (401, 403, 413, 422, 429, 503)


def _session_route(
    method: Callable[..., Any], path: str, operation_id: str, model: type, *statuses: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator of a route on one session (``method``: ``app.get`` or ``app.post``): the
    ``sessions`` tag, and the errors of every v1 route plus ``statuses``."""
    return method(
        path,
        response_model=model,
        operation_id=operation_id,
        responses=_errors(*V1_ERRORS, *statuses),
        tags=["sessions"],
    )


SESSION_LINKS = {
    name: {"operationId": op, "parameters": {"session_id": "$response.body#/session_id"}}
    for name, op in (
        ("TakeTurn", "take_turn"),
        ("GetSession", "get_session"),
        ("EndSession", "end_session"),
    )
}


class ServiceState:
    """Readiness: ``models`` becomes "ready" once the classifier, the LLM backend and the
    embedder are warm (loading runs in the background so /healthz answers meanwhile)."""

    def __init__(self) -> None:
        self.models = "loading"


def _warm_up(engine: Engine, state: ServiceState) -> None:
    try:
        engine.classifier.predict_one("hello")
        uses_llm = any(stage.kind == "llm" for stage in engine.flow.stages.values())
        if uses_llm:
            engine.backend.load()
        if uses_llm:  # the script index may come from disk: load the embedder's model too
            engine.compliance.embedder.embed_batch(["hello"])
        state.models = "ready"
    except Exception as exc:  # reported by /readyz; the service stays up for diagnosis
        log.error("model warm-up failed: %s: %s", type(exc).__name__, exc)
        state.models = f"failed: {type(exc).__name__}"


def _read_session(engine: Engine, session_id: str) -> SessionOut:
    conversation = engine.store.get(session_id)
    return session_out(conversation, engine.store.turns(session_id))


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    keys: KeyRing | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """The ASGI app serving ``engine``. Keys come from ``settings`` unless given."""
    keys = keys if keys is not None else load_keys(settings)
    limiter = limiter or RateLimiter()
    metrics = Metrics()
    state = ServiceState()
    StartRequest = start_request_model(
        engine.flow.slots,
        sorted(getattr(engine, "experiments", None) or ()),
        settings.max_slot_chars,
    )
    TurnRequest = turn_request_model(settings.max_text_chars)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        warm = asyncio.create_task(run_in_threadpool(_warm_up, engine, state))
        try:
            yield
        finally:
            warm.cancel()
            engine.store.close()

    app = FastAPI(
        title="salesbot",
        version="1",
        summary="Hybrid sales-call dialogue engine: sessions, turns, experiment reports.",
        description="Every `/v1` route needs an API key (`Authorization: Bearer <key>` or "
        '`X-API-Key`). Errors are JSON: `{"error": {"code", "message", "details"}}`.',
        lifespan=lifespan,
    )
    errors.install(app, metrics, settings.retry_after_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")

    def requires(scope: str):
        async def authorised(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            api_key: Annotated[str | None, Depends(header_key)],
        ) -> ApiKey:
            presented = credentials.credentials if credentials else api_key
            challenge = {"WWW-Authenticate": "Bearer"}
            if not presented:
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing API key: send `Authorization: Bearer <key>` or `X-API-Key`",
                    headers=challenge,
                )
            key = keys.authenticate(presented)
            if key is None:
                raise ApiError(401, "unauthorized", "invalid API key", headers=challenge)
            if scope not in key.scopes:
                raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
            wait = limiter.acquire(key.name, key.rate, key.burst)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"rate limit of key {key.name!r} exceeded",
                    headers={"Retry-After": retry_after(wait)},
                )
            return key

        return authorised

    TurnsKey = Annotated[ApiKey, Depends(requires("turns"))]
    ReportsKey = Annotated[ApiKey, Depends(requires("reports"))]
    SessionId = Annotated[str, Path(pattern=SESSION_ID, description="Session id.")]
    IdempotencyKey = Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY,
            description="Retrying with the same key returns the stored result and writes "
            "nothing new; the same key with another body is refused (422).",
        ),
    ]

    @app.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionCreated,
        responses={201: {"links": SESSION_LINKS}, **_errors(*V1_ERRORS)},
        operation_id="start_session",
        tags=["sessions"],
    )
    async def start_session(
        body: StartRequest,  # type: ignore[valid-type]
        key: TurnsKey,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> SessionCreated:
        """Open a session and return the bot's opening line."""
        options: dict[str, Any] = {}
        if body.arm is not None:
            options["arm"] = body.arm
        if getattr(body, "experiment", None) is not None:
            options["experiment"] = body.experiment
        if idempotency_key is not None:  # a key names a session per API key (its namespace)
            options["session_id"] = derived_session_id(idempotency_key, key.name)
        started = time.perf_counter()
        reply = await run_in_threadpool(
            partial(
                engine.start,
                body.customer_id,
                slot_values(body),
                idempotency_key=idempotency_key,
                **options,
            )
        )
        out = ReplyOut.of(reply)
        if not reply.replayed:
            metrics.sessions.inc()
        metrics.observe_turn(out.source, out.stage, time.perf_counter() - started)
        response.headers["Location"] = f"/v1/sessions/{out.session_id}"
        return SessionCreated(session_id=out.session_id, reply=out)

    @_session_route(app.post, "/v1/sessions/{session_id}/turns", "take_turn", ReplyOut, 404, 409)
    async def take_turn(
        session_id: SessionId,
        body: TurnRequest,  # type: ignore[valid-type]
        key: TurnsKey,
        idempotency_key: IdempotencyKey = None,
    ) -> ReplyOut:
        """Answer what the caller said. Send an Idempotency-Key so a retry is safe."""
        started = time.perf_counter()
        reply = await run_in_threadpool(
            partial(
                engine.turn,
                session_id,
                body.text,
                idempotency_key=idempotency_key,
                idempotency_scope=key.name,  # a key is one request of this API key's client
            )
        )
        metrics.observe_turn(reply.source, reply.stage, time.perf_counter() - started)
        return ReplyOut.of(reply)

    @_session_route(app.post, "/v1/sessions/{session_id}/end", "end_session", SessionOut, 404)
    async def end_session(
        session_id: SessionId,
        key: TurnsKey,
        body: Annotated[EndRequest | None, Body()] = None,
    ) -> SessionOut:
        """End a session (the caller hung up, the agent took over, ...). Idempotent."""
        reason = body.reason if body is not None else "hangup"
        await run_in_threadpool(engine.end, session_id, reason)
        return await run_in_threadpool(_read_session, engine, session_id)

    @_session_route(app.get, "/v1/sessions/{session_id}", "get_session", SessionOut, 404)
    async def get_session(session_id: SessionId, key: TurnsKey) -> SessionOut:
        """A session's state and transcript."""
        return await run_in_threadpool(_read_session, engine, session_id)

    @app.get(
        "/v1/experiments/{name}/report",
        operation_id="experiment_report",
        response_class=Response,
        responses={
            200: {
                "description": "The report: JSON (default), Markdown or self-contained HTML.",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/markdown": {"schema": {"type": "string"}},
                    "text/html": {"schema": {"type": "string"}},
                },
            },
            **_errors(*V1_ERRORS, 404),
        },
        tags=["experiments"],
    )
    async def experiment_report(
        name: Annotated[str, Path(pattern=NAME, description="Experiment name.")],
        key: ReportsKey,
        format: Literal["json", "markdown", "html"] = "json",
    ) -> Response:
        """The A/B report of an experiment, from the conversations in the store."""
        from engine.http.report import render_report  # statistics and charts: load lazily

        return await run_in_threadpool(render_report, engine, name, format)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready; see `checks`."}},
        tags=["operations"],
    )
    async def readyz() -> Any:
        """Readiness: the database answers and the models are loaded."""
        checks = {"models": state.models}
        try:
            with anyio.fail_after(settings.ready_timeout_s):
                await run_in_threadpool(engine.store.ping)
            checks["database"] = "ready"
        except TimeoutError:
            checks["database"] = "timeout"
        except sa_exc.SQLAlchemyError as exc:
            checks["database"] = f"unreachable: {type(getattr(exc, 'orig', None) or exc).__name__}"
        except Exception as exc:  # a DBAPI error raised outside SQLAlchemy's wrapping
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if all(v == "ready" for v in checks.values()):
            return Health(status="ready", checks=checks)
        return JSONResponse(
            Health(status="not_ready", checks=checks).model_dump(),
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
        tags=["operations"],
    )
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (all workers, in multiprocess mode)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.state.engine = engine
    app.state.metrics = metrics
    app.state.service = state
    return app


def app_from_env() -> FastAPI:
    """uvicorn's app factory (``--factory``): settings from ``SALESBOT_HTTP_*``."""
    settings = Settings.from_env()
    if settings.flow_dir is None:
        raise SettingsError("SALESBOT_HTTP_FLOW_DIR is not set")
    import_plugins(settings.plugins)
    engine = Engine.from_flow_dir(
        settings.flow_dir,
        settings.db_url,
        backend_name=settings.backend,
        backend_options=settings.backend_options,
        pool_size=settings.threads,  # one connection per engine thread, no overflow churn
    )
    return create_app(engine, settings)
