"""The fresh-process memory measurement shared by both capacity estimates."""

from __future__ import annotations

import pytest

from engine.errors import SalesbotError
from engine.llm.hf.measure import reset_peak, run_script, status


def test_status_reads_resident_and_peak_bytes() -> None:
    rss = status("VmRSS")
    assert rss > 1 << 20  # an interpreter is more than a megabyte
    assert status("VmHWM") >= rss
    with pytest.raises(KeyError):
        status("NoSuchField")


def test_reset_peak_brings_the_peak_down_to_now() -> None:
    script = (
        "import json\n"
        "from engine.llm.hf.measure import reset_peak, status\n"
        "block = bytearray(64 << 20); block[::4096] = b'x' * len(block[::4096])\n"
        "del block\n"
        "before = status('VmHWM'); reset_peak()\n"
        "print(json.dumps({'before': before, 'after': status('VmHWM')}))\n"
    )
    out = run_script(script, [])
    assert out["after"] < out["before"] - (32 << 20)
    reset_peak()  # callable here too


def test_run_script_passes_arguments_and_environment() -> None:
    script = (
        "import json, os, sys\n"
        "print(json.dumps({'n': int(sys.argv[1]), 'e': int(os.environ['X_MEASURE'])}))"
    )
    assert run_script(script, ["7"], {"X_MEASURE": "3"}) == {"n": 7, "e": 3}


def test_run_script_failure_names_the_error() -> None:
    with pytest.raises(SalesbotError, match="(?s)measurement failed:.*ZeroDivisionError"):
        run_script("1/0", [])
