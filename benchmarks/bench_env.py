"""Set-up shared by the compliance benchmark scripts; import it before ``engine``.

Puts the repository root on ``sys.path`` (the scripts run as ``python benchmarks/NAME.py``),
keeps transformers off the network model hub and quiet, and sets torch's thread count.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def set_threads(count: int) -> None:
    """torch intra-op threads (0: torch's default). On cores shared with other busy processes
    one thread is often faster than two: no thread waits at every barrier for a descheduled peer."""
    if count:
        import torch

        torch.set_num_threads(count)


def subcommand_parser(
    description: str, *names: str
) -> tuple[argparse.ArgumentParser, list[argparse.ArgumentParser]]:
    """A parser with one sub-parser per name, in that order, and the shared ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = [sub.add_parser(name) for name in names]
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default).")
    return parser, parsers


def run_subcommand(
    parser: argparse.ArgumentParser, commands: dict[str, Callable[[argparse.Namespace], None]]
) -> None:
    """Parse the command line, set torch's threads and run the chosen sub-command."""
    args = parser.parse_args()
    set_threads(args.threads)
    commands[args.command](args)
