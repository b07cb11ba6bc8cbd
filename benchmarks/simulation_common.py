"""Shared set-up for the simulation benchmarks: an engine on a flow with chosen parts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from engine.engine import Engine  # noqa: E402
from engine.simulation import Simulation, choose, load_population  # noqa: E402
from engine.simulation.batching import simulation_backend  # noqa: E402
from engine.simulation.standin import ScriptSampler  # noqa: E402,F401  (registers it)

BROADBAND = ROOT / "flows" / "broadband_en"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        cpu = model or cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at start"


def build(
    db_url: str,
    *,
    flow_dir: Path = BROADBAND,
    backend: str = "script-sampler",
    embedder: str | None = "tfidf-char",
    batch: int = 32,
) -> Engine:
    """An Engine like ``salesbot simulate`` builds, with a chosen backend and embedder."""
    from engine.flow.loader import load_flow
    from engine.llm import create_backend

    flow = load_flow(flow_dir)
    options = {"flow": flow} if backend == "script-sampler" else {}
    llm = simulation_backend(create_backend(backend, **options), max_batch=batch)
    engine = Engine.from_flow_dir(flow_dir, db_url, backend=llm, embedder_name=embedder)
    llm.load()
    return engine


def simulation(engine: Engine, arms: str, n: int, seed: int, *, population=None, concurrency=4):
    experiment, chosen = choose(engine.flow, engine.experiments, arms, None, seed)
    return Simulation(
        engine, population or load_population(engine.flow), experiment, chosen, n=n, seed=seed,
        concurrency=concurrency,
    )  # fmt: skip
