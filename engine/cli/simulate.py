"""``salesbot simulate``: the offline A/B simulation, the product's main job.

A thin layer: validate the inputs (flow, personas, utterances, arms) with exit code 2 on any
problem, build the engine with the embedded defaults, run the simulation with a progress bar,
write the A/B report and print a one-screen summary ending with the report's path. Ctrl-C stops
cleanly; running the same command again resumes the run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import click
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from engine.cli.common import DB_HELP, ConfigError, console
from engine.errors import FlowValidationError, SalesbotError
from engine.report.format import interval, pct, pts, pval
from engine.simulation.backends import build_backend
from engine.simulation.outputs import paired_sentence, write_simulation_files
from storage.repository import describe_db_error

DEFAULT_N = 100
DEFAULT_BATCH = 32


class RateColumn(ProgressColumn):
    """Conversations per second over the last half minute (rich's speed estimate)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} conv/s" if speed else "- conv/s", style="progress.data.speed")


def summary_table(report, result, seconds: float) -> Table:
    """One row per arm: size, close and hang-up rates, fallback rate, and the report's primary
    test (McNemar mid-p, paired by customer; Holm-adjusted with several treatment arms)."""
    table = Table(
        title=f"{report.experiment}: {report.primary_label.lower()}, paired by customer",
        caption=f"* control · run {result.run_id} · {result.done}/{result.total} "
        f"conversations · {seconds:.0f} s",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    level = f"{100 * (1 - report.alpha):g}%"
    several = len(report.primary) > 1
    # Narrow enough for 80 columns; the difference's interval is in the sentence printed below.
    headers = ["arm", "n", "closed", f"{level} CI", "hung up", "fallback", "diff\npts",
               "McNemar\nmid-p p"] + (["Holm\np"] if several else [])  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "arm" else "right", no_wrap=True)
    tests = {c.arm: c for c in report.primary}
    fallback: dict[str, list[int]] = {}
    for row in report.compliance:
        counts = fallback.setdefault(row.arm, [0, 0])
        counts[0] += row.fallback.count + row.universal.count
        counts[1] += row.turns
    for arm in report.arms:
        closed = arm.closed
        drafts = fallback.get(arm.name, [0, 0])
        test = tests.get(arm.name)
        name = arm.name if arm.name == arm.mode else f"{arm.name} ({arm.mode})"
        cells = [
            name + ("*" if arm.name == report.control else ""),
            str(arm.assigned),
            pct(closed.rate),
            interval(closed.low, closed.high),
            pct(arm.hung_up.rate),
            pct(drafts[0] / drafts[1]) if drafts[1] else "-",
            pts(test.diff, signed=True).removesuffix(" pts") if test else "",
            pval(test.p_value) if test else "",
        ]
        table.add_row(*cells, *([pval(test.p_adjusted) if test else ""] if several else []))
    return table


@click.command("simulate")
@click.argument("flow_dir", type=click.Path())
@click.option("--arms", default=None, help="Arms, e.g. hybrid,pure_llm or a=hybrid,b=hybrid.")
@click.option("--experiment", default=None, help="Run arms of this experiments.yaml experiment.")
@click.option("--n", "n", default=DEFAULT_N, show_default=True, type=click.IntRange(1),
              help="Simulated customers; each one is run in every arm.")  # fmt: skip
@click.option("--seed", default=7, show_default=True, type=click.IntRange(0))
@click.option("--db", default="sqlite:///salesbot.db", show_default=True, help=DB_HELP)
@click.option("--out", "out_dir", default=None, type=click.Path(),
              help="Report folder [default: reports/RUN_ID].")  # fmt: skip
@click.option("--backend", default=None,
              help="LLM backend [default: the flow's]; script-sampler: no model.")  # fmt: skip
@click.option("--embedder", default=None, help="Compliance embedder [default: the flow's].")
@click.option("--batch", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1),
              help="Most LLM calls per forward pass (1: no batching).")  # fmt: skip
@click.option("--concurrency", default=None, type=click.IntRange(1),
              help="Conversations in flight [default: 2 x batch].")  # fmt: skip
@click.option("--run-id", default=None, help="Name the run (default: a hash of its inputs).")
@click.option("--allow-backend-errors", is_flag=True,
              help="Exit 0 even when over 1% of LLM calls failed (still reported).")  # fmt: skip
def simulate(
    flow_dir: str,
    arms: str | None,
    experiment: str | None,
    n: int,
    seed: int,
    db: str,
    out_dir: str | None,
    backend: str | None,
    embedder: str | None,
    batch: int,
    concurrency: int | None,
    run_id: str | None,
    allow_backend_errors: bool,
) -> None:
    """Run N simulated customers through FLOW_DIR in every arm and write the A/B report.

    The same customers (personas.yaml, utterances.yaml, --seed) meet every arm, so the arms
    are compared pair by pair. Everything is stored like live traffic in --db. Interrupt with
    Ctrl-C and run the same command again to resume. Exits 1 when more than 1% of the LLM
    calls failed (the report would measure the broken backend), unless --allow-backend-errors.
    """
    if "torch" not in sys.modules:
        # OpenMP threads that spin while they wait for each other lose badly when the cores are
        # shared (this process runs one LLM forward while its other threads classify, embed and
        # store, and other programs may be running): measured on the shared 2-core VM at load
        # ~4, a batch-1 decode step took 0.8-1.7 s with the default (active) policy and ~0.1 s
        # with a passive one. libgomp reads this once, when torch is first imported.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from engine.engine import Engine
    from engine.experiments import load_experiments
    from engine.flow.loader import load_flow
    from engine.report import build_report, write_report
    from engine.report.health import backend_failed
    from engine.simulation import Simulation, choose, load_population

    started = time.perf_counter()
    try:
        flow = load_flow(flow_dir)
        population = load_population(flow)
        experiments = load_experiments(flow_dir, flow)
        spec, chosen = choose(flow, experiments, arms, experiment, seed)
    except (FlowValidationError, SalesbotError) as exc:
        raise ConfigError(str(exc)) from None
    try:
        with console.status("Loading classifier, embedder and LLM..."):
            llm = build_backend(backend, flow, batch, concurrency or 2 * batch)
            engine = Engine.from_flow_dir(flow_dir, db, backend=llm, embedder_name=embedder)
            llm.load()
        simulation = Simulation(
            engine, population, spec, chosen, n=n, seed=seed,
            concurrency=concurrency or 2 * batch, run_id=run_id,
        )  # fmt: skip
    except SalesbotError as exc:
        raise ConfigError(str(exc)) from None
    except (SQLAlchemyError, ModuleNotFoundError) as exc:  # unreachable, bad URL, no driver
        raise ConfigError(f"--db: cannot open the database: {describe_db_error(exc)}") from None
    labels = ", ".join(f"{a.label} ({a.mode})" for a in chosen)
    source = "experiments.yaml" if spec.name in experiments else "ad hoc"
    console.print(
        f"simulating [bold]{n}[/bold] customers x {len(chosen)} arms: {labels}; experiment "
        f"{spec.name} ({source}); run {simulation.run_id}; {engine.store.url.split(':')[0]}"
    )
    stop = threading.Event()
    columns = (
        SpinnerColumn(), TextColumn("conversations"), BarColumn(), MofNCompleteColumn(),
        RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("simulate", total=n * len(chosen))
        first: list[int] = []

        def on_progress(done: int, total: int) -> None:
            if not first:  # conversations finished before a resume do not count in the rate
                first.append(done)
                progress.reset(task, total=total, completed=done)
            else:
                progress.update(task, completed=done)

        try:
            result = simulation.run(stop=stop, on_progress=on_progress)
        except KeyboardInterrupt:
            progress.stop()
            console.print(
                "[yellow]interrupted[/yellow]: finished conversations are stored; run the same "
                "command again to resume."
            )
            sys.exit(130)
        except SalesbotError as exc:
            raise click.ClickException(str(exc)) from None
    if result.resumed:
        console.print(f"resumed: {result.resumed} conversations were already finished")
    stalled = getattr(getattr(llm, "stats", None), "stalled", 0)
    if stalled:
        console.print(
            f"[yellow]warning[/yellow]: {stalled} LLM round(s) went out incomplete (a "
            "conversation was blocked outside the LLM); those batches depended on timing, so a "
            "rerun may differ in some drafts."
        )
    report = build_report(engine.store, spec.name, run_id=result.run_id)
    folder = Path(out_dir or Path("reports") / result.run_id)
    paths = write_report(report, folder)
    params = {"run_id": result.run_id, **simulation.plan.params()}
    write_simulation_files(folder, report, params, paths["html"].name)
    elapsed = time.perf_counter() - started
    console.print(summary_table(report, result, elapsed))
    for comparison in report.primary:
        console.print(paired_sentence(comparison, report.alpha))
    for check in report.health:
        if check.status == "alarm":
            console.print(f"[red]alarm[/red] ({check.name}): {check.verdict}")
    console.print(f"also written: {', '.join(p.name for p in paths.values())}, simulation.md")
    console.print(f"report: [bold]{paths['html']}[/bold]", soft_wrap=True)
    failed = backend_failed(report)
    if failed is not None:
        if allow_backend_errors:
            console.print(
                f"[red]error[/red]: {failed.verdict} (exit 0: --allow-backend-errors)",
                soft_wrap=True,
            )
        else:
            console.print(
                f"[red]error[/red]: {failed.verdict} Exiting with status 1; pass "
                "--allow-backend-errors to accept the run.",
                soft_wrap=True,
            )
            sys.exit(1)
