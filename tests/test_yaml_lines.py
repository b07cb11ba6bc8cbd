from pathlib import Path

import pytest

from engine.flow.yaml_lines import YamlSyntaxError, load_located


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "f.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_of_nested_keys_and_list_items(tmp_path):
    located = load_located(write(tmp_path, "a:\n  b: 1\n  c:\n    - x\n    - y\n"))
    assert located.data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert located.lines[("a", "b")] == 2
    assert located.lines[("a", "c", 1)] == 5
    assert located.line_of(("a", "c", 1, "missing")) == 5


def test_duplicate_keys_are_reported_with_their_line(tmp_path):
    located = load_located(write(tmp_path, "a: 1\nb: 2\na: 3\n"))
    assert located.duplicates == [(("a",), 3)]


def test_yaml_1_1_boolean_words_stay_strings(tmp_path):
    located = load_located(write(tmp_path, "on:\n  yes: no\nlist: [yes, off, true, False]\n"))
    assert located.data == {"on": {"yes": "no"}, "list": ["yes", "off", True, False]}


def test_syntax_error_carries_the_line(tmp_path):
    with pytest.raises(YamlSyntaxError) as info:
        load_located(write(tmp_path, "a: 1\nb: [unclosed\nc: 2\n"))
    assert info.value.line is not None and info.value.line >= 2


def test_self_referencing_alias_is_an_error_not_a_crash(tmp_path):
    with pytest.raises(YamlSyntaxError, match="refers to itself") as info:
        load_located(write(tmp_path, "a: 1\nx: &loop [*loop]\n"))
    assert info.value.line == 2
