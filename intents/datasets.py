"""Labelled intent data for evaluation: a flow's examples, or public data sets on disk.

Formats read (what the public intent benchmarks ship as):

* JSON, CLINC150 style: an object of splits, each a list of ``[text, label]`` pairs. Split
  names ``train``, ``val`` (or ``validation``/``dev``) and ``test``; ``oos_train``, ``oos_val``
  and ``oos_test`` hold out-of-scope examples;
* JSON, NLU Evaluation Corpora style (Braun et al. 2017: Chatbot, AskUbuntu, WebApplications):
  an object with a ``sentences`` list of ``{"text", "intent", "training": true|false}``;
  ``training: true`` is train, the rest is test (the paper's split);
* CSV: a folder with ``train.csv``, optional ``val.csv`` (or ``validation.csv``/``dev.csv``) and
  ``test.csv``, or one CSV file with a ``split`` column. Text column ``text`` (or ``utterance``,
  ``sentence``); label column ``label`` (or ``intent``, ``category``).

Labels ``oos``, ``out_of_scope`` and ``out-of-scope`` all mean out of scope.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from engine.errors import SalesbotError
from intents.rejection import OUT_OF_SCOPE

OOS_LABELS = frozenset({"oos", "out_of_scope", "out-of-scope"})
SPLIT_ALIASES = {"validation": "val", "dev": "val", "valid": "val"}
TEXT_COLUMNS = ("text", "utterance", "sentence", "query")
LABEL_COLUMNS = ("label", "intent", "category")


class DatasetError(SalesbotError):
    """A data set file that cannot be read as labelled intent data."""


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_oos(self) -> int:
        return sum(label == OUT_OF_SCOPE for label in self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split | None
    test: Split
    note: str = ""  # how the splits were made when the source did not fix them


def _label(raw: object) -> str:
    text = str(raw).strip()
    return OUT_OF_SCOPE if text.lower() in OOS_LABELS else text


def _split(pairs: Sequence[tuple[str, str]]) -> Split:
    return Split(tuple(t for t, _ in pairs), tuple(_label(label) for _, label in pairs))


def load_dataset(path: str | Path, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Read a JSON or CSV data set; without a validation split, carve one out of train."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        pairs = _read_csv_folder(path)
    elif path.suffix.lower() == ".json":
        pairs = _read_json(path)
    elif path.suffix.lower() == ".csv":
        pairs = _read_csv_with_split_column(path)
    else:
        raise DatasetError(f"{path}: expected a .json file, a .csv file or a folder of CSV files")
    for need in ("train", "test"):
        if not pairs.get(need):
            raise DatasetError(f"{path}: no {need!r} split (found: {', '.join(sorted(pairs))})")
    train, val, note = pairs["train"], pairs.get("val"), ""
    if not val:
        train, val, stratified = _carve(train, val_fraction, seed)
        how = "stratified" if stratified else "not stratified: too few examples per class"
        note = f"no validation split: {val_fraction:.0%} of train held out ({how}, seed {seed})"
    return Dataset(path.stem, _split(train), _split(val), _split(pairs["test"]), note)


def _carve(
    pairs: list[tuple[str, str]], fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], bool]:
    """Split off a validation share; the flag says whether the split could be stratified."""
    labels = [label for _, label in pairs]
    try:
        train, val = train_test_split(pairs, test_size=fraction, stratify=labels, random_state=seed)
        stratified = True
    except ValueError:  # a class with one example, or fewer held out than classes
        train, val = train_test_split(pairs, test_size=fraction, random_state=seed)
        stratified = False
    return [tuple(p) for p in train], [tuple(p) for p in val], stratified


def _read_json(path: Path) -> dict[str, list[tuple[str, str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise DatasetError(
            f"{path}: expected an object of splits, e.g. {{'train': [[text, label]]}}"
        )
    if isinstance(data.get("sentences"), list):
        return _read_sentences(path, data["sentences"])
    pairs: dict[str, list[tuple[str, str]]] = {}
    for name, rows in data.items():
        oos = name.startswith("oos_")
        split = SPLIT_ALIASES.get(name.removeprefix("oos_"), name.removeprefix("oos_"))
        if split not in ("train", "val", "test") or not isinstance(rows, list):
            continue
        for i, row in enumerate(rows):
            if not (isinstance(row, list | tuple) and len(row) == 2 and isinstance(row[0], str)):
                raise DatasetError(f"{path}: {name}[{i}]: expected [text, label], got {row!r}")
            pairs.setdefault(split, []).append((row[0], OUT_OF_SCOPE if oos else str(row[1])))
    return pairs


def _read_sentences(path: Path, sentences: list) -> dict[str, list[tuple[str, str]]]:
    """The NLU Evaluation Corpora layout: one list, the split in each sentence's flag."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for i, row in enumerate(sentences):
        if not (
            isinstance(row, Mapping)
            and isinstance(row.get("text"), str)
            and isinstance(row.get("intent"), str)
            and isinstance(row.get("training"), bool)
        ):
            raise DatasetError(
                f"{path}: sentences[{i}]: expected text, intent and training (true/false)"
            )
        split = "train" if row["training"] else "test"
        pairs.setdefault(split, []).append((row["text"], row["intent"]))
    return pairs


def _columns(path: Path, header: Sequence[str]) -> tuple[str, str]:
    lower = {h.strip().lower(): h for h in header}
    text = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
    label = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    if text is None or label is None:
        raise DatasetError(
            f"{path}: needs a text column ({'/'.join(TEXT_COLUMNS)}) and a label column "
            f"({'/'.join(LABEL_COLUMNS)}); header is {list(header)}"
        )
    return text, label


def _read_csv(path: Path) -> tuple[list[dict[str, str]], tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not readable CSV ({exc})") from None
    return rows, _columns(path, header)


def _read_csv_folder(folder: Path) -> dict[str, list[tuple[str, str]]]:
    pairs: dict[str, list[tuple[str, str]]] = {}
    for file in sorted(folder.glob("*.csv")):
        split = SPLIT_ALIASES.get(file.stem.lower(), file.stem.lower())
        if split not in ("train", "val", "test"):
            continue
        rows, (text, label) = _read_csv(file)
        pairs[split] = [(r[text] or "", r[label] or "") for r in rows]
    return pairs


def _read_csv_with_split_column(path: Path) -> dict[str, list[tuple[str, str]]]:
    rows, (text, label) = _read_csv(path)
    if rows and "split" not in rows[0]:
        raise DatasetError(f"{path}: a single CSV file needs a 'split' column (train/val/test)")
    pairs: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        split = (row.get("split") or "").strip().lower()
        pairs.setdefault(SPLIT_ALIASES.get(split, split), []).append(
            (row[text] or "", row[label] or "")
        )
    return pairs


def flow_dataset(
    examples: Mapping[str, Sequence[str]], name: str, *, test_size: float = 0.2, seed: int = 0
) -> Dataset:
    """A flow's intents.yaml examples as train / test (stratified); validation is out-of-fold."""
    pairs = [(t, intent) for intent in sorted(examples) for t in examples[intent]]
    labels = [label for _, label in pairs]
    train, test = train_test_split(pairs, test_size=test_size, stratify=labels, random_state=seed)
    return Dataset(
        name,
        _split(train),
        None,
        _split(test),
        f"held-out {test_size:.0%} of intents.yaml (stratified, seed {seed}); "
        "calibration and rule on out-of-fold predictions of the rest",
    )
