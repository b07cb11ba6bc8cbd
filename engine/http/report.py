"""The report route's work, imported only when a report is asked for (statistics and charts
are heavy imports)."""

from __future__ import annotations

from fastapi.responses import HTMLResponse, JSONResponse, Response

from engine.engine import Engine
from engine.http.errors import ApiError

MEDIA_TYPES = {"json": "application/json", "markdown": "text/markdown", "html": "text/html"}


def render_report(engine: Engine, name: str, format: str) -> Response:
    """Build the experiment's report from the live store and render it as asked."""
    from engine.report import ReportError, build_report, render_html, render_markdown

    try:
        report = build_report(engine.store, name)
    except ReportError as exc:
        raise ApiError(404, "experiment_not_found", str(exc)) from None
    if format == "markdown":
        return Response(render_markdown(report), media_type="text/markdown; charset=utf-8")
    if format == "html":
        return HTMLResponse(render_html(report))
    return JSONResponse(report.to_dict())
