"""YAML loading that remembers where every value came from.

PyYAML's safe loader drops line numbers and silently keeps the last of two duplicate keys; flow
authors need both: errors that point at a line, and duplicate keys reported instead of hidden.
We compose the node graph (which carries marks) and build plain Python values from it ourselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass
class LocatedYaml:
    """Plain data plus a map from each value's path (keys and list indexes) to its 1-based line."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicates: list[tuple[Loc, int]] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its nearest ancestor that exists in the file."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


class YamlSyntaxError(Exception):
    def __init__(self, line: int | None, message: str):
        self.line = line
        super().__init__(message)


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans.

    YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans, which turns a bare ``on:`` block
    into ``True:`` and the intent example ``- yes`` into ``True``. No flow value is ever meant
    that way.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _build(
    node: yaml.Node,
    loc: Loc,
    out: LocatedYaml,
    loader: yaml.SafeLoader,
    ancestors: frozenset[int] = frozenset(),
) -> Any:
    if id(node) in ancestors:
        raise YamlSyntaxError(node.start_mark.line + 1, "an alias refers to itself")
    ancestors = ancestors | {id(node)}
    out.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise YamlSyntaxError(key_node.start_mark.line + 1, "mapping keys must be scalars")
            if key in result:
                out.duplicates.append(((*loc, key), key_node.start_mark.line + 1))
            child = (*loc, key)
            result[key] = _build(value_node, child, out, loader, ancestors)
            out.lines[child] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*loc, i), out, loader, ancestors) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def load_located(path: Path) -> LocatedYaml:
    """Parse one YAML file; raise :class:`YamlSyntaxError` with a line number on bad syntax."""
    text = path.read_text(encoding="utf-8")
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        out = LocatedYaml(data=None)
        if node is not None:
            out.data = _build(node, (), out, loader)
        return out
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(line, f"YAML syntax error: {exc.problem or exc}") from None
    finally:
        loader.dispose()
