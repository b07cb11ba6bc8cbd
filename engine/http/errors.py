"""Every error the API returns is JSON of one shape, and none carries a stack trace or SQL::

    {"error": {"code": "session_not_found", "message": "...", "details": [...]}}

Domain exceptions map to 4xx here (the library raises them, this edge translates them). A
database that cannot be reached is a 503 with ``Retry-After``: the request wrote nothing and
may be retried; SQLAlchemy's pool reconnects by itself once the database is back. Database
errors are logged by class and first line only: SQLAlchemy's messages carry the statement's
parameters, which can hold customer slot values.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (
    ConcurrentTurns,
    IdempotencyKeyReused,
    InvalidSlot,
    MissingSlot,
    SalesbotError,
    SessionEnded,
    SessionNotFound,
)
from engine.http.metrics import Metrics
from storage.repository import describe_db_error

log = logging.getLogger("salesbot.http")

# Errors that mean "the database is not there right now", not "this request is wrong".
UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx response."""

    error: ErrorInfo


class ApiError(Exception):
    """Raised by routes and dependencies for a 4xx with a code of our choosing."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details or []


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    """Register the handlers that turn exceptions into JSON error bodies."""

    def respond(status: int, code: str, message: str, **kwargs: Any) -> JSONResponse:
        metrics.errors.labels(code).inc()
        return error_response(status, code, message, **kwargs)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.message, headers=exc.headers, details=exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400: a body it could not decode. One code for "bad body": 422.
            return respond(422, "invalid_request", f"invalid request body ({exc.detail})")
        code = STATUS_CODES.get(exc.status_code, "error")
        return respond(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: echoing the input could put customer data (or
        # undecodable bytes) into the response.
        details = [
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        where = ", ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:3])
        return respond(422, "invalid_request", f"invalid request ({where})", details=details)

    @app.exception_handler(SessionNotFound)
    async def _not_found(_request: Request, exc: SessionNotFound) -> JSONResponse:
        return respond(404, "session_not_found", str(exc))

    @app.exception_handler(SessionEnded)
    async def _ended(_request: Request, exc: SessionEnded) -> JSONResponse:
        return respond(409, "session_ended", str(exc))

    @app.exception_handler(ConcurrentTurns)
    async def _concurrent(_request: Request, exc: ConcurrentTurns) -> JSONResponse:
        return respond(409, "concurrent_turns", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(IdempotencyKeyReused)
    async def _key_reused(_request: Request, exc: IdempotencyKeyReused) -> JSONResponse:
        # 422, as the IETF Idempotency-Key draft says: a client bug, not a retry to answer.
        detail = {"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "reused"}
        return respond(422, "idempotency_key_reused", str(exc), details=[detail])

    @app.exception_handler(MissingSlot)
    async def _missing(_request: Request, exc: MissingSlot) -> JSONResponse:
        return respond(422, "missing_slot", str(exc))

    @app.exception_handler(InvalidSlot)
    async def _invalid_slot(_request: Request, exc: InvalidSlot) -> JSONResponse:
        # Names the slot and the rule; the value is customer data and is not echoed.
        detail = {"loc": ["body", "slots", exc.name], "msg": exc.detail, "type": exc.rule}
        return respond(422, "invalid_slot", str(exc), details=[detail])

    @app.exception_handler(SalesbotError)
    async def _domain(_request: Request, exc: SalesbotError) -> JSONResponse:
        # Any other domain error raised for a request is about what the request asked for
        # (an unknown experiment or arm, say).
        return respond(422, "rejected", str(exc))

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def _database(request: Request, exc: sa_exc.SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, UNAVAILABLE) or getattr(exc, "connection_invalidated", False):
            log.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.url.path,
                describe_db_error(exc),
            )
            return respond(
                503,
                "database_unavailable",
                "the database is unavailable; retry after the indicated delay",
                headers={"Retry-After": str(retry_after_s)},
            )
        log.error(
            "database error on %s %s: %s", request.method, request.url.path, describe_db_error(exc)
        )
        return respond(500, "internal_error", "internal error")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the server logs the traceback.
        return respond(500, "internal_error", "internal error")
