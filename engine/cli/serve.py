"""``salesbot serve``: the HTTP service on uvicorn.

Everything that can be wrong with the configuration (flow, keys, backend name, plug-ins,
database URL) is checked here, once, before any worker starts: a problem exits with code 2 and
a message, never a traceback in N workers. This process also migrates the database and trains
the intent classifier's cache, so workers starting together do not race to do either.

With ``--workers 1`` the app runs in this process. With more, uvicorn's supervisor spawns the
workers (and restarts one that dies); each builds its own engine through the app factory
``engine.http.app:app_from_env`` from the ``SALESBOT_HTTP_*`` variables set here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from typing import Any

import click

from engine.cli.common import DB_HELP, ConfigError, _load_flow_or_exit, bounded_int_option
from engine.errors import SalesbotError

_KEEP_ALIVE_HELP = (
    "Seconds an idle keep-alive connection stays open: above a load balancer's idle "
    "timeout (often 60 s), so the server never closes a connection a client is reusing."
)
_START_HELP = (
    "Seconds a worker may take to start (it loads the classifier, embedder and LLM) and to "
    "answer the supervisor's health check while busy, before it is replaced."
)


def _options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that reads as JSON (``2``, ``0.5``, ``true``) is typed."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--backend-option expects NAME=VALUE, got {pair!r}")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    return values


def _log_config(level: str) -> dict:
    """uvicorn's logging configuration plus the service's own ``salesbot`` logger."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["salesbot"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    # Everything else (engine, backends) through the same handler, warnings and up.
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


@click.command()
@click.argument("flow_dir", type=click.Path())
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--backend", default=None, help="LLM backend name [default: transformers].")
@click.option(
    "--backend-option", "backend_options", multiple=True, metavar="NAME=VALUE", help="Repeatable."
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Module to import first; it may register backends. Repeatable.",
)
@click.option(
    "--api-keys",
    "api_keys_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML/JSON file of API keys (sha256 digests and scopes); or set SALESBOT_HTTP_API_KEYS.",
)
@click.option("--threads", type=click.IntRange(1, 1000), default=None, help="Per worker.")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@bounded_int_option("--timeout-keep-alive", default=65, low=1, high=3600, help=_KEEP_ALIVE_HELP)
@bounded_int_option("--worker-start-timeout", default=120, low=5, high=3600, help=_START_HELP)
def serve(
    flow_dir: str,
    db: str,
    host: str,
    port: int,
    workers: int,
    backend: str | None,
    backend_options: tuple[str, ...],
    plugins: tuple[str, ...],
    api_keys_file: str | None,
    threads: int | None,
    log_level: str,
    access_log: bool,
    timeout_keep_alive: int,
    worker_start_timeout: int,
) -> None:
    """Serve a flow over HTTP for call-centre backends (FastAPI on uvicorn).

    Other settings come from SALESBOT_HTTP_* variables (see engine/http/settings.py).
    """
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from engine.engine import Engine
    from engine.http.app import create_app
    from engine.http.auth import load_keys
    from engine.http.settings import Settings, import_plugins
    from engine.llm import available_backends
    from storage.repository import describe_db_error

    base = Settings.from_env
    overrides: dict = {"flow_dir": flow_dir, "db_url": db}
    if backend:
        overrides["backend"] = backend
    if backend_options:
        overrides["backend_options"] = _options(backend_options)
    if api_keys_file:
        overrides["api_keys_file"] = api_keys_file
    if threads:
        overrides["threads"] = threads
    try:
        settings = base(**overrides)
        if plugins:
            settings = settings.model_copy(update={"plugins": (*settings.plugins, *plugins)})
        import_plugins(settings.plugins)
        load_keys(settings)
        if settings.backend not in available_backends():
            known = ", ".join(available_backends())
            raise ConfigError(f"unknown LLM backend {settings.backend!r} (known: {known})")
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None
    _load_flow_or_exit(flow_dir)
    try:
        engine = Engine.from_flow_dir(
            flow_dir,
            db,
            backend_name=settings.backend,
            backend_options=settings.backend_options,
            pool_size=settings.threads,
        )
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None
    except (SQLAlchemyError, ModuleNotFoundError) as exc:  # unreachable, bad URL, no driver
        raise ConfigError(f"cannot open the database: {describe_db_error(exc)}") from None

    log_config = _log_config(log_level)
    common = dict(
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        log_config=log_config,
        timeout_keep_alive=timeout_keep_alive,
    )
    if workers == 1:
        uvicorn.run(create_app(engine, settings), **common)
        return
    engine.store.close()
    del engine
    os.environ.update(settings.to_env())
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="salesbot-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        # uvicorn's supervisor pings each worker and replaces one that does not answer within
        # timeout_worker_healthcheck (5 s by default). A worker importing torch and loading
        # models holds the GIL for longer than that on a busy 2-core machine, so with the default
        # every worker was killed while starting and the service never came up.
        uvicorn.run(
            "engine.http.app:app_from_env",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=worker_start_timeout,
            **common,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    serve()
