"""Kill the process (SIGKILL) while a turn's write transaction is open, go on with a new Engine.

The child blocks *inside* the turn's transaction: the conversation row is updated and the turn row
inserted, the commit not yet sent. A SQLAlchemy cursor hook does the blocking (nothing in the
product waits for tests). On SQLite that is the write path itself (BEGIN IMMEDIATE, guarded
UPDATE, inserts, COMMIT); on PostgreSQL, whose turn write is one statement in autocommit, the hook
opens the transaction block just before that statement, so the statement's rows are written
but uncommitted when the process dies. Either way the killed turn must leave nothing behind.
"""

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
    from sqlalchemy import event
    from tests.fakes import FakeBackend
    from tests.test_engine import make_engine

    engine = make_engine(sys.argv[1], FakeBackend(default="faster plan"))
    armed = False

    @event.listens_for(engine.store.engine, "before_cursor_execute")
    def open_block(conn, cursor, statement, parameters, context, executemany):
        if armed and "INSERT INTO turns" in statement and conn.dialect.name == "postgresql":
            cursor.execute("BEGIN")  # hold the one-statement write's transaction open

    @event.listens_for(engine.store.engine, "after_cursor_execute")
    def block(conn, cursor, statement, parameters, context, executemany):
        if armed and "INSERT INTO turns" in statement:
            print("WRITING", flush=True)  # the turn row is written, the commit not sent
            time.sleep(120)

    session = engine.start("restart-1", {"customer_name": "Alex"}).session_id
    print("SESSION", session, flush=True)
    armed = True
    engine.turn(session, "yes")  # enters the llm stage; killed inside the write
    print("COMMITTED", flush=True)
    """
)


def test_sigkill_inside_the_turn_transaction_stores_nothing_and_the_turn_is_redone(db_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        session = None
        for line in child.stdout:
            seen.append(line.split()[0])
            if line.startswith("SESSION"):
                session = line.split()[1]
            if line.startswith("WRITING"):
                break
        assert session, "child never started a session"
        assert seen[-1] == "WRITING", seen  # killed inside the open transaction, not before it
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert "COMMITTED" not in seen

    engine = make_engine(db_url)
    engine.backend.enqueue("Would you like me to upgrade you to the faster plan today?")
    # Nothing of the killed turn is stored: no turn row, no stage event, no audit row, and the
    # conversation row is as the opening left it.
    assert [t.turn_index for t in engine.transcript(session)] == [0]
    assert [e.stage for e in engine.store.stage_events(session)] == ["greeting"]
    assert engine.store.compliance_decisions(session) == []
    conversation = engine.store.get(session)
    assert (conversation.stage, conversation.turn_count, conversation.status) == (
        "greeting",
        0,  # the opening is not a customer turn
        "active",
    )
    # The same turn, redone by a new process, is written whole.
    reply = engine.turn(session, "yes")
    assert (reply.turn_index, reply.stage, reply.script_id) == (1, "pitch", "pitch.ask")
    assert [t.turn_index for t in engine.transcript(session)] == [0, 1]
    assert [e.stage for e in engine.store.stage_events(session)] == ["greeting", "pitch"]
    assert len(engine.store.compliance_decisions(session)) == 1
