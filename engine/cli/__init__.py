"""The `salesbot` command line: one module per command group, each thin over the library.

``engine.cli:main`` is the console entry point (pyproject's ``[project.scripts]``).
"""

from engine.cli.main import main

__all__ = ["main"]
