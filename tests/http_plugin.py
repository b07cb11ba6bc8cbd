"""Test-only plug-in for server processes: ``--plugin tests.http_plugin --backend scripted-fake``.

A fake at the process boundary, like tests/fakes.py, but driven by what the caller says, since
a test cannot reach into another process's queue: ``[down]`` in the caller's text makes the
backend fail (the engine must answer with the stage's fallback), ``[slow]`` makes it sleep
``slow_s`` seconds first, anything else returns ``reply``.
"""

from __future__ import annotations

import time

from engine.llm import BackendError, BatchItem, Generation, LLMBackend, register_backend
from tests.fakes import customer_words

APPROVED = "Our faster plan gives you 500 megabits for eight pounds more a month."


class CallerDrivenBackend(LLMBackend):
    name = "scripted-fake"

    def __init__(self, reply: str = APPROVED, slow_s: float | str = 2.0):
        self.reply = reply
        self.slow_s = float(slow_s)

    def _generate(self, request: BatchItem) -> Generation:
        said = customer_words(request.messages)
        if "[down]" in said:
            raise BackendError("scripted-fake: backend down")
        if "[slow]" in said:
            time.sleep(self.slow_s)
        return Generation(self.reply, prompt_tokens=10, completion_tokens=12, seconds=0.0)


register_backend("scripted-fake", CallerDrivenBackend)
