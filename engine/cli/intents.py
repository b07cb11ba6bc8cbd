"""``salesbot intents``: evaluate and train intent classifiers. A thin layer over ``intents``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engine.errors import SalesbotError

console = Console()
MODELS = ("tfidf", "tfidf+minilm")


class _ConfigError(click.ClickException):
    exit_code = 2


class _Rule(click.ParamType):
    """A number in [0, 1] or ``auto``."""

    name = "NUMBER|auto"

    def convert(self, value, param, ctx):
        if value is None or value == "auto" or isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if not 0 <= number <= 1:
            self.fail(f"{number} is not in [0, 1]", param, ctx)
        return number


def _source_options(func):
    options = [
        click.argument("flow_dir", required=False, type=click.Path()),
        click.option(
            "--data",
            type=click.Path(),
            help="A data set instead of a flow: CLINC150-style JSON, a CSV with a split column,"
            " or a folder with train/val/test CSV files.",
        ),
        click.option("--model", type=click.Choice(MODELS), help="Default: the flow's, or tfidf."),
        click.option(
            "--language",
            help="Language of a --data set (zh/ja: character n-grams only).",
            default="en",
            show_default=True,
        ),
        click.option("--threshold", type=_Rule(), help="Number or 'auto' (default: flow / auto)."),
        click.option("--margin", type=_Rule(), help="Number or 'auto' (default: flow / auto)."),
        click.option(
            "-C",
            "--c",
            "c",
            type=float,
            default=0.5,
            show_default=True,
            help="Regularisation of the linear SVM (larger: fits the examples more closely).",
        ),
        click.option("--max-accuracy-drop", type=float, help="'auto' rules may cost this much."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _prepare(flow_dir, data, model, language, threshold, margin, c, max_accuracy_drop, seed):
    """(dataset, classifier parameters) for a flow folder or a data set."""
    from intents.datasets import flow_dataset, load_dataset

    if (flow_dir is None) == (data is None):
        raise click.UsageError("give a FLOW_DIR or --data PATH (one of them)")
    try:
        if data is not None:
            dataset = load_dataset(data, seed=seed)
            params = {"language": language, "model": model or "tfidf", "threshold": "auto"}
            params["margin"] = "auto"
            params["max_accuracy_drop"] = 0.01
        else:
            from engine.cli.common import _load_flow_or_exit

            flow = _load_flow_or_exit(flow_dir)
            dataset = flow_dataset(
                {k: list(v) for k, v in flow.intents.items()}, flow.name, seed=seed
            )
            params = {
                "language": flow.language,
                "model": model or flow.classifier_model,
                "threshold": flow.classifier_threshold,
                "margin": flow.classifier_margin,
                "calibrate": flow.classifier_calibrate,
                "max_accuracy_drop": flow.classifier_max_accuracy_drop,
            }
    except SalesbotError as exc:
        raise _ConfigError(str(exc)) from None
    if threshold is not None:
        params["threshold"] = threshold
    if margin is not None:
        params["margin"] = margin
    if max_accuracy_drop is not None:
        params["max_accuracy_drop"] = max_accuracy_drop
    params.update(C=c, random_state=seed)
    return dataset, params


def _train(dataset, params):
    from intents.classifier import IntentClassifier

    validation = (
        {"X_val": list(dataset.val.texts), "y_val": list(dataset.val.labels)}
        if dataset.val is not None
        else {}
    )
    started = time.perf_counter()
    try:
        model = IntentClassifier(**params).fit(
            list(dataset.train.texts), list(dataset.train.labels), **validation
        )
    except ValueError as exc:
        raise _ConfigError(f"cannot train on {dataset.name}: {exc}") from None
    return model, time.perf_counter() - started


@click.group("intents")
def intents() -> None:
    """Evaluate and train intent classifiers."""


@intents.command("eval")
@_source_options
@click.option(
    "--plot",
    type=click.Path(),
    default="intents-sweep.png",
    show_default=True,
    help="Where to save the threshold sweep plot (PNG).",
)
@click.option("--json", "json_path", type=click.Path(), help="Also write the report as JSON.")
def eval_command(flow_dir, data, model, language, threshold, margin, c, max_accuracy_drop,
                 seed, plot, json_path) -> None:  # fmt: skip
    """Held-out evaluation of a flow's classifier (FLOW_DIR) or of a data set (--data)."""
    from intents.evaluation import evaluate, plot_sweep

    dataset, params = _prepare(
        flow_dir, data, model, language, threshold, margin, c, max_accuracy_drop, seed
    )
    console.print(
        f"[bold]{dataset.name}[/bold]: train {len(dataset.train)}"
        + (f", validation {len(dataset.val)} ({dataset.val.n_oos} OOS)" if dataset.val else "")
        + f", test {len(dataset.test)} ({dataset.test.n_oos} OOS); model {params['model']}"
    )
    if dataset.note:
        console.print(f"[dim]{dataset.note}[/dim]")
    classifier, seconds = _train(dataset, params)
    report = evaluate(classifier, dataset.test.texts, dataset.test.labels)
    _print_report(report, seconds)
    saved = plot_sweep(
        classifier,
        dataset.test.texts,
        dataset.test.labels,
        plot,
        title=f"{dataset.name} ({params['model']}): threshold sweep on the test split",
    )
    console.print(f"plot: {saved}")
    if json_path:
        payload = {"dataset": dataset.name, "params": params, "train_seconds": seconds}
        payload.update(report.to_dict())
        Path(json_path).write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        console.print(f"json: {json_path}")


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _print_report(report, seconds: float) -> None:
    rule = report.rule
    console.print(
        f"trained in {seconds:.1f} s; temperature {report.temperature:.3f}; rule: threshold "
        f"{rule.threshold:g}, margin {rule.margin:g} ({report.rule_source})"
    )
    summary = Table(title="Held-out test")
    for column in ("metric", "value"):
        summary.add_column(column)
    for name, value in (
        ("in-scope accuracy %", _pct(report.in_scope_accuracy)),
        ("top-1 accuracy % (no rejection)", _pct(report.top1_accuracy)),
        ("OOS recall %", _pct(report.oos_recall)),
        ("OOS precision %", _pct(report.oos_precision)),
        ("macro-F1 %", _pct(report.macro_f1)),
        ("ECE % raw -> calibrated", f"{_pct(report.ece_raw)} -> {_pct(report.ece_calibrated)}"),
    ):
        summary.add_row(name, value)
    console.print(summary)
    if report.confused:
        pairs = Table(title="Most confused (true -> predicted top-1)")
        for column in ("true", "predicted", "count"):
            pairs.add_column(column)
        for true, predicted, count in report.confused:
            pairs.add_row(true, predicted, str(count))
        console.print(pairs)
    sweep = Table(title=f"Threshold sweep (margin {rule.margin:g})")
    for column in ("threshold", "rejected %", "acc. accepted %", "in-scope acc. %", "OOS recall %",
                   "OOS precision %"):  # fmt: skip
        sweep.add_column(column, justify="right")
    for row in report.sweep:
        sweep.add_row(
            f"{row.threshold:.1f}",
            _pct(row.rejection_rate),
            _pct(row.accepted_accuracy),
            _pct(row.in_scope_accuracy),
            _pct(row.oos_recall),
            _pct(row.oos_precision),
        )
    console.print(sweep)


@intents.command("train")
@_source_options
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    required=True,
    help="Model file to write (skops format; a .manifest.json with its sha256 goes beside it).",
)
def train_command(flow_dir, data, model, language, threshold, margin, c, max_accuracy_drop,
                  seed, output) -> None:  # fmt: skip
    """Train on all of a flow's examples (or a data set's train split) and save the model."""
    from engine.hashing import file_sha256
    from intents.datasets import Split
    from intents.persistence import save

    dataset, params = _prepare(
        flow_dir, data, model, language, threshold, margin, c, max_accuracy_drop, seed
    )
    if flow_dir is not None:  # deploy on every example, not on the evaluation split
        everything = Split(
            dataset.train.texts + dataset.test.texts, dataset.train.labels + dataset.test.labels
        )
        dataset = type(dataset)(dataset.name, everything, None, dataset.test, dataset.note)
    classifier, seconds = _train(dataset, params)
    path = save(classifier, output)
    calibration = classifier.calibration_
    console.print(
        f"[green]saved[/green] {path} (sha256 {file_sha256(path)[:16]}...): "
        f"{len(classifier.classes_)} labels, model {params['model']}, trained in {seconds:.1f} s"
    )
    console.print(
        f"temperature {classifier.temperature_:.3f} ({classifier.held_out_}); rule: threshold "
        f"{classifier.rule_.threshold:g}, margin {classifier.rule_.margin:g} "
        f"({classifier.rule_source_})"
        + (
            f"; held-out ECE {_pct(calibration['ece_before'])}% -> "
            f"{_pct(calibration['ece_after'])}%"
            if calibration
            else ""
        )
    )
