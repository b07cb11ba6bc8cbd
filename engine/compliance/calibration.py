"""Calibrate and evaluate the compliance filter on labelled drafts.

A pairs file is CSV with a header ``stage,label,category,text``: ``text`` is an LLM draft,
``label`` the approved script id(s) it may be mapped to (``|``-separated) or ``none`` when every
script would misrepresent it and it must fall back; ``category`` is free text for the breakdown
(paraphrase, near_miss, discount, off_topic, injection, ...). CSV because compliance teams
label in spreadsheets.

Every draft is embedded and matched once; a threshold sweep then only re-reads the scores, so
sweeping 61 thresholds costs the same as one evaluation. The metrics:

- ``false_accept``: share of ``none`` drafts that were mapped to a script (the risk);
- ``wrong_script``: share of labelled drafts mapped to a script not in their label;
- ``fallback``: share of labelled drafts that fell back (the cost: a good draft thrown away);
- ``accuracy``: share of drafts decided correctly (right script, or fallback for ``none``);
- ``auroc``: how well the best score ranks "nearest script is acceptable" above "it is not"
  (sklearn ``roc_auc_score``), i.e. how well *any* threshold can separate them.

The proposed threshold of a stage is the lowest one whose false-accept rate is at most
``max_false_accept``: the fewest fallbacks the risk budget allows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.compliance.filter import ComplianceFilter
from engine.compliance.index import as_vector
from engine.errors import FlowProblem, SalesbotError
from engine.flow.model import Flow
from engine.flow.problems import Problems

COLUMNS = ("stage", "label", "category", "text")
NONE = "none"
GRID = tuple(round(0.30 + 0.01 * i, 2) for i in range(61))  # 0.30 .. 0.90


class PairsError(SalesbotError):
    """A pairs file that cannot be used; lists every bad row with its line."""

    def __init__(self, problems: list[FlowProblem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in pairs file:\n{lines}")


@dataclass(frozen=True)
class Pair:
    line: int
    stage: str
    text: str
    acceptable: frozenset[str]  # empty: the draft must fall back
    category: str


@dataclass(frozen=True)
class Scored:
    """One pair after matching: everything a threshold decision needs."""

    pair: Pair
    best: str | None
    score: float  # -inf when nothing was eligible
    margin: float | None
    rule_hit: bool


@dataclass(frozen=True)
class Metrics:
    n: int
    labelled: int  # pairs with an acceptable script
    none: int  # pairs that must fall back
    accuracy: float
    false_accept: float
    wrong_script: float
    fallback: float
    auroc: float | None


def load_pairs(path: str | Path, flow: Flow) -> list[Pair]:
    """Read and check a pairs file against ``flow``: stage exists and is answered by the LLM in
    some arm, every label is a candidate script of that stage."""
    path = Path(path)
    problems = Problems(path.parent).file(path.name)

    def bad(line: int | None, field: str, message: str) -> None:
        problems.add((field,) if field else (), message, line)

    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        bad(None, "", f"cannot read: {exc}")
        raise PairsError(problems.items) from None
    pairs: list[Pair] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            bad(1, "", f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
            raise PairsError(problems.items)
        for row in reader:
            line = reader.line_num
            stage = (row["stage"] or "").strip()
            text = (row["text"] or "").strip()
            label = (row["label"] or "").strip()
            policy = flow.stages[stage].compliance if stage in flow.stages else None
            if policy is None:
                llm = sorted(n for n, s in flow.stages.items() if s.compliance is not None)
                bad(line, "stage", f"{stage!r} is not a stage with a compliance policy ({llm})")
                continue
            if not text:
                bad(line, "text", "empty draft")
                continue
            ids = [] if label.lower() == NONE else [i.strip() for i in label.split("|")]
            if not ids and label.lower() != NONE:
                bad(line, "label", "write a script id (several with |) or none")
                continue
            unknown = [i for i in ids if i not in policy.candidates]
            if unknown:
                bad(line, "label", f"not a candidate script of stage {stage!r}: {unknown}")
                continue
            category = (row["category"] or "").strip() or "uncategorised"
            pairs.append(Pair(line, stage, text, frozenset(ids), category))
    if not pairs and not problems.items:
        bad(None, "", "no pairs")
    if problems.items:
        raise PairsError(problems.items)
    return pairs


def session_slots(flow: Flow, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every slot known (defaults, overrides, else the slot's name), so every script is
    eligible: calibration is about the whole library, not one customer."""
    slots = {k: v if v is not None else k.replace("_", " ") for k, v in flow.slot_defaults.items()}
    return {**slots, **dict(overrides or {})}


def score_pairs(
    flt: ComplianceFilter, pairs: Sequence[Pair], slots: Mapping[str, str]
) -> list[Scored]:
    """Match every draft once (drafts of a stage are embedded in one batch)."""
    scored: list[Scored | None] = [None] * len(pairs)
    texts = [p.text for p in pairs]
    vectors = flt.embedder.embed_batch(texts)
    for i, pair in enumerate(pairs):
        policy = flt.flow.stages[pair.stage].compliance
        assert policy is not None
        mask = flt.eligible_mask(policy, slots)
        top, margin = flt.index.view(policy.candidates).top(as_vector(vectors[i]), mask, 1)
        hit = bool(flt.rule_hits(pair.text, policy, slots))
        best, score = top[0] if top else (None, -math.inf)
        scored[i] = Scored(pair, best, score, margin, hit)
    return [s for s in scored if s is not None]


def _accepted(scored: Sequence[Scored], threshold: float, margin: float) -> np.ndarray:
    return np.array(
        [
            s.best is not None
            and not s.rule_hit
            and s.score >= threshold
            and (s.margin is None or s.margin >= margin)
            for s in scored
        ],
        dtype=bool,
    )


def auroc(scored: Sequence[Scored]) -> float | None:
    """Best score as a ranking of "nearest script acceptable" (None when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    y = np.array([s.best in s.pair.acceptable for s in scored], dtype=int)
    if y.min(initial=1) == y.max(initial=0):
        return None
    scores = np.array([s.score if not s.rule_hit else -1.0 for s in scored], dtype=float)
    return float(roc_auc_score(y, np.nan_to_num(scores, neginf=-1.0)))


def _evaluate(scored: Sequence[Scored], accepted: np.ndarray) -> Metrics:
    labelled = np.array([bool(s.pair.acceptable) for s in scored], dtype=bool)
    right = np.array([s.best in s.pair.acceptable for s in scored], dtype=bool)
    correct = np.where(labelled, accepted & right, ~accepted)

    def rate(part: np.ndarray, of: np.ndarray) -> float:
        return float(part[of].mean()) if of.any() else 0.0

    return Metrics(
        n=len(scored),
        labelled=int(labelled.sum()),
        none=int((~labelled).sum()),
        accuracy=float(correct.mean()) if len(scored) else 0.0,
        false_accept=rate(accepted, ~labelled),
        wrong_script=rate(accepted & ~right, labelled),
        fallback=rate(~accepted, labelled),
        auroc=auroc(scored) if len(scored) else None,
    )


def metrics(scored: Sequence[Scored], threshold: float, margin: float) -> Metrics:
    """Metrics with every pair judged at one threshold and margin (a sweep point)."""
    return _evaluate(scored, _accepted(scored, threshold, margin))


def decided_metrics(scored: Sequence[Scored], flow: Flow) -> Metrics:
    """Metrics with each pair judged at its own stage's threshold and margin (as deployed)."""
    accepted = np.array(
        [
            _accepted([s], policy.threshold, policy.margin)[0]
            for s in scored
            for policy in [flow.stages[s.pair.stage].compliance]
        ],
        dtype=bool,
    )
    return _evaluate(scored, accepted)


@dataclass(frozen=True)
class StageSweep:
    """One stage's sweep at the margin that allows the fewest fallbacks within the budget."""

    stage: str
    current: float  # the flow's threshold now
    current_margin: float
    margin: float  # the margin of ``rows`` (the proposed one when several were swept)
    rows: tuple[tuple[float, Metrics], ...]
    proposed: float | None  # None: no threshold on the grid meets the false-accept budget
    best_accuracy: float  # the threshold with the best accuracy at ``margin``
    by_margin: tuple[tuple[float, float | None, Metrics | None], ...]  # (margin, proposed, at it)

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "current": self.current,
            "current_margin": self.current_margin,
            "margin": self.margin,
            "proposed": self.proposed,
            "best_accuracy": self.best_accuracy,
            "by_margin": [
                {"margin": m, "proposed": t, "metrics": asdict(x) if x else None}
                for m, t, x in self.by_margin
            ],
            "rows": [{"threshold": t, **asdict(m)} for t, m in self.rows],
        }


def _propose(
    rows: Sequence[tuple[float, Metrics]], max_false_accept: float
) -> tuple[float, Metrics] | None:
    """The lowest threshold within the false-accept budget (fewest good drafts thrown away)."""
    return next(((t, m) for t, m in rows if m.false_accept <= max_false_accept), None)


def sweep(
    scored: Sequence[Scored],
    flow: Flow,
    *,
    max_false_accept: float = 0.05,
    grid: Iterable[float] = GRID,
    margins: Sequence[float] | None = None,
) -> list[StageSweep]:
    """Per stage: metrics at every grid threshold for each margin (default: the stage's own),
    and the proposal: the (margin, threshold) with the lowest fallback rate within the budget."""
    grid = tuple(sorted(grid))
    out = []
    for stage in sorted({s.pair.stage for s in scored}):
        policy = flow.stages[stage].compliance
        assert policy is not None
        part = [s for s in scored if s.pair.stage == stage]
        tables = {
            m: tuple((t, metrics(part, t, m)) for t in grid)
            for m in (margins if margins else [policy.margin])
        }
        proposals = {m: _propose(rows, max_false_accept) for m, rows in tables.items()}
        feasible = [(m, p) for m, p in proposals.items() if p is not None]
        if feasible:
            chosen, (threshold, _) = min(
                feasible, key=lambda mp: (mp[1][1].fallback, -mp[1][1].accuracy, mp[0])
            )
        else:
            chosen, threshold = next(iter(tables)), None
        rows = tables[chosen]
        best = max(rows, key=lambda r: (r[1].accuracy, -r[0]))[0]
        by_margin = tuple(
            (m, p[0] if p else None, p[1] if p else None) for m, p in proposals.items()
        )
        out.append(
            StageSweep(
                stage, policy.threshold, policy.margin, chosen, rows, threshold, best, by_margin
            )
        )
    return out


def breakdown(scored: Sequence[Scored], flow: Flow, key: str = "category") -> dict[str, Metrics]:
    """Metrics at the flow's own thresholds, per stage or per category."""
    groups: dict[str, list[Scored]] = {}
    for s in scored:
        groups.setdefault(getattr(s.pair, key), []).append(s)
    return {name: decided_metrics(part, flow) for name, part in sorted(groups.items())}


def plot(sweeps: Sequence[StageSweep], path: str | Path, title: str) -> Path:
    """One panel per stage: false-accept and fallback rates against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False, sharey=True
    )
    for ax, sw in zip(axes[0], sweeps, strict=True):
        ts = [t for t, _ in sw.rows]
        ax.plot(ts, [m.false_accept for _, m in sw.rows], label="false accept (none drafts)")
        ax.plot(ts, [m.fallback for _, m in sw.rows], label="fallback (good drafts)")
        ax.plot(ts, [m.wrong_script for _, m in sw.rows], label="wrong script", linestyle=":")
        ax.plot(ts, [m.accuracy for _, m in sw.rows], label="accuracy", linestyle="--")
        ax.axvline(sw.current, color="grey", linewidth=0.8, label=f"current {sw.current:.2f}")
        if sw.proposed is not None:
            ax.axvline(sw.proposed, color="red", linewidth=1, label=f"proposed {sw.proposed:.2f}")
        ax.set_title(f"{sw.stage} (margin {sw.margin:g})")
        ax.set_xlabel("threshold")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rate")
    axes[0][-1].legend(fontsize=8, loc="center right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
