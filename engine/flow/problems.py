"""Collect every problem of a set of files, each located by file, line and field.

Flows, personas, experiments and calibration pairs are all edited by hand and all validated the
same way: report everything wrong in one run, each problem with its file, line and field, so an
author can fix them in one pass. :class:`Problems` is that collector, and :meth:`Problems.read`
the one YAML-file reader behind it (missing file, not UTF-8, bad syntax, duplicate keys, not a
mapping, then the pydantic model), so the checks and their wording are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from engine.errors import FlowProblem, FlowValidationError
from engine.flow.yaml_lines import Loc, LocatedYaml, YamlSyntaxError, load_located

M = TypeVar("M", bound=BaseModel)


class Problems:
    """Problems of the files in one folder; a field path is resolved to its line in its file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.items: list[FlowProblem] = []
        self.located: dict[str, LocatedYaml] = {}

    def add(self, file: str, loc: Loc, message: str, line: int | None = None) -> None:
        """A problem at field ``loc`` of ``file``; its line is looked up when not given."""
        located = self.located.get(file)
        if line is None and located:
            line = located.line_of(loc)
        field = ".".join(str(part) for part in loc)
        self.items.append(FlowProblem(str(self.folder / file), line, field, message))

    def file(self, name: str) -> FileProblems:
        """A view that adds problems to ``name`` only (for checks of a single file)."""
        return FileProblems(self, name)

    def read(self, file: str, model: type[M]) -> M | None:
        """Parse ``file`` with line numbers and validate it against ``model``.

        Returns None, with every problem recorded, when the file is missing, not UTF-8, not
        YAML or not a mapping, or does not fit the model. The parsed data stays in
        :attr:`located` (also on failure, for lines of later checks).
        """
        path = self.folder / file
        if not path.is_file():
            self.add(file, (), "file is missing")
            return None
        try:
            located = load_located(path)
        except YamlSyntaxError as exc:
            self.add(file, (), str(exc), exc.line)
            return None
        except UnicodeDecodeError as exc:
            self.add(file, (), f"not UTF-8 text: {exc}")
            return None
        self.located[file] = located
        for loc, line in located.duplicates:
            self.add(file, loc, "duplicate key (the earlier value would be overwritten)", line)
        if not isinstance(located.data, dict):
            self.add(file, (), "the file must contain a mapping at the top level")
            return None
        try:
            return model.model_validate(located.data)
        except ValidationError as exc:
            for err in exc.errors():
                self.add(file, tuple(err["loc"]), err["msg"])
        return None

    def raise_if_any(self) -> None:
        """Raise :class:`FlowValidationError` listing every problem collected so far."""
        if self.items:
            raise FlowValidationError(self.items)


class FileProblems:
    """The problems of one file of a :class:`Problems` collector."""

    def __init__(self, problems: Problems, file: str):
        self.problems = problems
        self.name = file

    @property
    def items(self) -> list[FlowProblem]:
        return self.problems.items

    def add(self, loc: Loc, message: str, line: int | None = None) -> None:
        self.problems.add(self.name, loc, message, line)
