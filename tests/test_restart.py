"""Kill the process mid-turn (SIGKILL, during generation) and go on with a new Engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from tests.conftest import ROOT
from tests.test_engine import make_engine

CHILD = textwrap.dedent(
    """
    import sys, time
    from tests.fakes import FakeBackend
    from tests.test_engine import make_engine

    class Slow(FakeBackend):
        def generate(self, messages, params, seed=None, session_key=None):
            print("GENERATING", flush=True)
            time.sleep(60)

    engine = make_engine(sys.argv[1], Slow())
    session = engine.start("restart-1", {"customer_name": "Alex"}).session_id
    print("SESSION", session, flush=True)
    engine.turn(session, "yes")  # enters the llm stage; killed while generating
    """
)


def test_sigkill_mid_turn_loses_only_the_unfinished_turn(db_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        session = None
        for line in child.stdout:
            if line.startswith("SESSION"):
                session = line.split()[1]
            if line.startswith("GENERATING"):
                break
        assert session, "child never started a session"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    engine = make_engine(db_url)
    engine.backend.enqueue("Would you like me to upgrade you to the faster plan today?")
    assert [t.turn_index for t in engine.transcript(session)] == [0]  # the killed turn rolled back
    reply = engine.turn(session, "yes")
    assert (reply.turn_index, reply.stage, reply.script_id) == (1, "pitch", "pitch.ask")
    assert [t.turn_index for t in engine.transcript(session)] == [0, 1]
