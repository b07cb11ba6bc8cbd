"""The Store: one object that owns the database engine and the transaction rules.

Every turn is one transaction that first locks its conversation: on PostgreSQL the conditional
``UPDATE conversations ... WHERE id = :id AND turn_count = :seen`` that opens the write takes the
row lock (a concurrent writer waits for it, then re-checks the condition and matches nothing),
on SQLite ``BEGIN IMMEDIATE`` takes the database's write lock at the start rather than at the
first write, so two processes cannot interleave a read-modify-write. Other locked work
(:meth:`Store.locked`) uses ``SELECT ... FOR UPDATE``.

The per-turn path (:meth:`Store.read_turn`, :meth:`Store.write_turn`) is SQLAlchemy Core, not
the ORM: one statement on an autocommit connection for the read (snapshot, recent history and
the idempotency lookup together); for the write one statement on PostgreSQL (data-modifying
CTEs: the guarded UPDATE and the inserts that select from its result), one short transaction
elsewhere. Pooled connections are not pinged before use (``pool_pre_ping`` costs a round trip
per checkout); a connection found dead invalidates the pool and the work is done once more on a
fresh connection (a write first checks that its row is not already stored), so the service
recovers by itself after a database restart, and an outage surfaces as an
``OperationalError`` (a 503 in the HTTP service).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from engine.errors import SessionEnded, SessionNotFound
from storage import migrate
from storage.models import ComplianceDecision, Conversation, StageEvent, Turn

DEFAULT_URL = "sqlite:///salesbot.db"
POOL_SIZE = 5  # SQLAlchemy's default; size it to the threads that use the store at once
POOL_RECYCLE_S = 1800  # replace pooled connections older than this (idle timeouts, failovers)
READ_OPTION = "salesbot_read"  # execution option: a read-only connection (see make_engine)
T = TypeVar("T")
L = TypeVar("L", Turn, StageEvent, ComplianceDecision)

_conversations = Conversation.__table__
_turns = Turn.__table__
_stage_events = StageEvent.__table__
_audits = ComplianceDecision.__table__
_SNAPSHOT_COLUMNS = (
    _conversations.c.id,
    _conversations.c.arm,
    _conversations.c.stage,
    _conversations.c.stage_turns,
    _conversations.c.turn_count,
    _conversations.c.status,
    _conversations.c.outcome,
    _conversations.c.slots,
    _conversations.c.assignment,
    _conversations.c.progress,
)
_TURN_COLUMNS = (
    _turns.c.turn_index,
    _turns.c.user_text,
    _turns.c.reply_text,
    _turns.c.script_id,
    _turns.c.stage.label("turn_stage"),
    _turns.c.source,
    _turns.c.intent,
    _turns.c.confidence,
    _turns.c.margin,
    _turns.c.variant,
    _turns.c.latencies,
    _turns.c.idempotency_key,
    _turns.c.request_hash,
)


def _read_statement(with_key: bool):
    """Conversation ``:conversation_id`` joined with its last ``:history`` turns (and, with a
    key, the turn stored under ``:key``). Built once: building a statement costs more CPU
    than SQLAlchemy's compiled cache saves."""
    c, t = _conversations, _turns
    wanted = t.c.turn_index > c.c.turn_count - bindparam("history")
    if with_key:
        wanted = or_(wanted, t.c.idempotency_key == bindparam("key"))
    return (
        select(*_SNAPSHOT_COLUMNS, *_TURN_COLUMNS)
        .select_from(c.outerjoin(t, and_(t.c.conversation_id == c.c.id, wanted)))
        .where(c.c.id == bindparam("conversation_id"))
        .order_by(t.c.turn_index)
    )


_READ = {False: _read_statement(False), True: _read_statement(True)}
# The SET clause comes from the execution parameters (the conversation's changes).
_GUARDED_UPDATE = update(_conversations).where(
    _conversations.c.id == bindparam("w_id"),
    _conversations.c.turn_count == bindparam("w_seen"),
    _conversations.c.status == "active",
)
_STATE = select(_conversations.c.turn_count, _conversations.c.status, _conversations.c.outcome)
_INSERT_CONVERSATION = insert(_conversations)
_INSERT_TURN = insert(_turns)
_INSERT_EVENTS = insert(_stage_events)
_INSERT_AUDIT = insert(_audits)


def _pg_write_statement(
    change_keys: tuple[str, ...],
    turn_keys: tuple[str, ...],
    event_keys: tuple[tuple[str, ...], ...],
    audit_keys: tuple[str, ...] | None,
) -> Any:
    """PostgreSQL: a turn's whole write as one statement (data-modifying CTEs), so it costs one
    round trip instead of five (BEGIN, UPDATE, INSERTs, COMMIT)::

        WITH guarded AS (UPDATE conversations SET ... WHERE id = :w_id AND turn_count = :w_seen
                         AND status = 'active' RETURNING id),
             turn AS (INSERT INTO turns (...) SELECT :t_... FROM guarded),
             ... (stage events, compliance decision likewise)
        SELECT count(*) FROM guarded

    The UPDATE takes the row lock; the inserts select from its result, so they write nothing
    when the guard matched no row. One statement in autocommit is one transaction.
    """
    c = _conversations
    guarded = (
        update(c)
        .where(
            c.c.id == bindparam("w_id"),
            c.c.turn_count == bindparam("w_seen"),
            c.c.status == "active",
        )
        .values({k: bindparam(f"c_{k}", type_=c.c[k].type) for k in change_keys})
        .returning(c.c.id)
        .cte("guarded")
    )

    def rows(table: Any, prefix: str, keys: tuple[str, ...]) -> Any:
        values = [bindparam(f"{prefix}_{k}", type_=table.c[k].type) for k in keys]
        return select(*values).select_from(guarded)

    writes = [insert(_turns).from_select(list(turn_keys), rows(_turns, "t", turn_keys))]
    if event_keys:
        keys = event_keys[0]
        selects = [rows(_stage_events, f"e{i}", keys) for i in range(len(event_keys))]
        source = selects[0] if len(selects) == 1 else union_all(*selects)
        writes.append(insert(_stage_events).from_select(list(keys), source))
    if audit_keys is not None:
        writes.append(insert(_audits).from_select(list(audit_keys), rows(_audits, "a", audit_keys)))
    statement = select(func.count()).select_from(guarded)
    for i, write in enumerate(writes):
        statement = statement.add_cte(write.cte(f"write_{i}"))
    return statement


@dataclass(frozen=True)
class Snapshot:
    """What a turn needs to know about its session, read without holding a lock."""

    id: str
    arm: str
    stage: str
    stage_turns: int
    turn_count: int
    status: str
    outcome: str | None
    slots: dict[str, Any]
    history: tuple[tuple[str | None, str], ...]  # (customer text, bot reply), oldest first
    assignment: dict[str, Any] | None = None  # the experiment record, when it was read too
    progress: dict[str, Any] | None = None  # the ruler's state (engine.milestones.Progress)

    @classmethod
    def opening(cls, id: str, arm: str, stage: str, slots: dict[str, Any]) -> Snapshot:
        """A session about to be opened: in its first stage, nothing said yet."""
        return cls(id, arm, stage, 0, 0, "active", None, slots, ())


StoredTurn = dict[str, Any]  # a turn's columns, as read back (its stage under ``stage``)


def _is_disconnect(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def make_engine(url: str, pool_size: int | None = None) -> SAEngine:
    """A SQLAlchemy engine with the per-backend settings salesbot relies on.

    Client-server databases get a pool of ``pool_size`` connections (size it to the threads
    that use the store at once: connections beyond it are overflow, opened and closed per use)
    and no ``pool_pre_ping`` (see the module docstring for how disconnects are handled).
    """
    if not url.startswith("sqlite"):
        size = pool_size or POOL_SIZE
        return create_engine(
            url,
            pool_size=size,
            max_overflow=max(10, size // 2),
            pool_recycle=POOL_RECYCLE_S,
        )
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    database = make_url(url).database
    if not in_memory and database and not database.startswith("file:"):
        # like --out: a database file may name a folder that does not exist yet
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A read (Store.read_turn) takes no lock: a deferred BEGIN reads a WAL snapshot.
        if conn.get_execution_options().get(READ_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def describe_db_error(exc: BaseException) -> str:
    """The driver error's class and first line: no SQL, no parameters."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    if isinstance(exc, sa_exc.StatementError) and orig is exc:
        first = ""  # a statement error without a driver error: its text is the statement
    return f"{type(orig).__name__}: {first}"[:300]


class Store:
    """Conversation storage over any SQLAlchemy URL; migrates the database to head on open."""

    def __init__(self, url: str = DEFAULT_URL, *, pool_size: int | None = None):
        self.url = url
        self.engine = make_engine(url, pool_size)
        with self.engine.begin() as connection:
            migrate.upgrade(connection)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads of the turn path: autocommit on a server database (no BEGIN / ROLLBACK round
        # trips; one statement is one consistent snapshot), a deferred BEGIN on SQLite.
        sqlite = self.engine.dialect.name == "sqlite"
        self._read_options = {READ_OPTION: True} if sqlite else {"isolation_level": "AUTOCOMMIT"}
        self._pg_statements: dict[tuple, Any] = {}  # write statements by the rows' shape

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """``SELECT 1`` on a raw DBAPI connection: no ORM transaction, so SQLite's
        ``BEGIN IMMEDIATE`` is not taken (a health check must not wait for the write lock)."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            cursor.close()
        finally:
            connection.close()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as db:
            yield db

    @contextmanager
    def locked(self, conversation_id: str) -> Iterator[tuple[Session, Conversation]]:
        """A transaction holding the conversation's lock; commits on normal exit."""
        with self._sessions.begin() as db:
            query = select(Conversation).where(Conversation.id == conversation_id)
            if self.dialect == "postgresql":
                query = query.with_for_update()
            conversation = db.scalars(query).one_or_none()
            if conversation is None:
                raise SessionNotFound(conversation_id)
            yield db, conversation

    def _retry_disconnect(self, work: Callable[[], T]) -> T:
        """Run ``work`` (that has written nothing when it fails on its first statement) and, if
        it found its pooled connection dead, once more: the failure invalidated the pool, so
        the second try connects afresh, and raises if the database is really unreachable."""
        try:
            return work()
        except sa_exc.DBAPIError as exc:
            if not _is_disconnect(exc):
                raise
        return work()

    def read_turn(
        self, conversation_id: str, idempotency_key: str | None, history: int = 8
    ) -> tuple[Snapshot, StoredTurn | None]:
        """The session's snapshot and, if ``idempotency_key`` names a stored turn, that turn.

        One statement: the conversation row joined with its last ``history`` turns and the
        turn carrying the key, so both are one consistent snapshot.
        """
        query = _READ[idempotency_key is not None]
        params = {"conversation_id": conversation_id, "history": history, "key": idempotency_key}

        def read() -> list[Any]:
            with self.engine.connect() as conn:
                return conn.execution_options(**self._read_options).execute(query, params).all()

        rows = self._retry_disconnect(read)
        if not rows:
            raise SessionNotFound(conversation_id)
        first = rows[0]
        stored: StoredTurn | None = None
        turns = []
        for row in rows:
            if row.turn_index is None:
                continue  # a conversation without turns (outer join)
            if idempotency_key is not None and row.idempotency_key == idempotency_key:
                stored = {column.name: row._mapping[column.name] for column in _TURN_COLUMNS}
                stored["stage"] = stored.pop("turn_stage")
                stored["conversation_id"] = conversation_id
            if row.turn_index > first.turn_count - history:
                turns.append((row.user_text, row.reply_text))
        snapshot = Snapshot(
            id=first.id,
            arm=first.arm,
            stage=first.stage,
            stage_turns=first.stage_turns,
            turn_count=first.turn_count,
            status=first.status,
            outcome=first.outcome,
            slots=dict(first.slots or {}),
            history=tuple(turns),
            assignment=dict(first.assignment or {}),
            progress=first.progress,
        )
        return snapshot, stored

    def write_turn(
        self,
        conversation_id: str,
        seen_turn_count: int,
        changes: Mapping[str, Any],
        turn: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]] = (),
        audit: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write one turn if no other turn of the session was written since the snapshot that
        saw ``seen_turn_count``: update the conversation with ``changes`` and insert the rows,
        in one transaction. False on such a conflict (nothing written); raises SessionEnded if
        the session ended meanwhile, SessionNotFound if it does not exist.
        """
        if self.dialect == "postgresql" and len({tuple(e) for e in events}) <= 1:
            write = partial(
                self._write_turn_pg, conversation_id, seen_turn_count, changes, turn, events, audit
            )
            try:
                matched = write()
            except sa_exc.DBAPIError as exc:
                # A dead pooled connection (the pool is invalidated now). The statement may have
                # failed before or after its commit: look for the row before writing again.
                if not _is_disconnect(exc) or "created_at" not in turn:
                    raise
                matched = self._turn_written(conversation_id, turn) or write()
            if matched:
                return True
            with self.engine.connect() as conn:
                query = _STATE.where(_conversations.c.id == conversation_id)
                current = conn.execution_options(**self._read_options).execute(query).one_or_none()
            if current is None:
                raise SessionNotFound(conversation_id)
            if current.turn_count != seen_turn_count:
                return False
            raise SessionEnded(conversation_id, current.outcome)
        params = {**changes, "w_id": conversation_id, "w_seen": seen_turn_count}

        def begin() -> tuple[Connection, int]:
            conn = self.engine.connect()
            try:
                conn.begin()
                # PostgreSQL: the UPDATE takes the row lock; SQLite: BEGIN IMMEDIATE took the
                # database's. A writer that waited re-checks the condition and matches nothing.
                return conn, conn.execute(_GUARDED_UPDATE, params).rowcount
            except BaseException:
                conn.close()
                raise

        conn, matched = self._retry_disconnect(begin)
        with conn:
            if matched != 1:
                query = _STATE.where(_conversations.c.id == conversation_id)
                current = conn.execute(query).one_or_none()
                conn.rollback()
                if current is None:
                    raise SessionNotFound(conversation_id)
                if current.turn_count != seen_turn_count:
                    return False
                raise SessionEnded(conversation_id, current.outcome)
            self._insert_rows(conn, turn, events, audit)
            conn.commit()
        return True

    def _write_turn_pg(
        self,
        conversation_id: str,
        seen_turn_count: int,
        changes: Mapping[str, Any],
        turn: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
        audit: Mapping[str, Any] | None,
    ) -> bool:
        shape = (
            tuple(changes),
            tuple(turn),
            tuple(tuple(e) for e in events),
            tuple(audit) if audit is not None else None,
        )
        statement = self._pg_statements.get(shape)
        if statement is None:
            statement = self._pg_statements[shape] = _pg_write_statement(*shape)
        params = {"w_id": conversation_id, "w_seen": seen_turn_count}
        params.update({f"c_{k}": v for k, v in changes.items()})
        params.update({f"t_{k}": v for k, v in turn.items()})
        for i, row in enumerate(events):
            params.update({f"e{i}_{k}": v for k, v in row.items()})
        if audit is not None:
            params.update({f"a_{k}": v for k, v in audit.items()})
        with self.engine.connect() as conn:
            conn = conn.execution_options(**self._read_options)
            return conn.execute(statement, params).scalar_one() == 1

    def key_used_elsewhere(self, scope: str, key: str, conversation_id: str) -> bool:
        """Whether ``key`` of ``scope`` was already written on another session (a reused key)."""
        query = (
            select(_turns.c.id)
            .where(
                _turns.c.idempotency_scope == scope,
                _turns.c.idempotency_key == key,
                _turns.c.conversation_id != conversation_id,
            )
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execution_options(**self._read_options).execute(query).first() is not None

    def _turn_written(self, conversation_id: str, turn: Mapping[str, Any]) -> bool:
        """Whether exactly this turn row (same index, same creation time) is stored."""
        query = select(_turns.c.id).where(
            _turns.c.conversation_id == conversation_id,
            _turns.c.turn_index == turn["turn_index"],
            _turns.c.created_at == turn["created_at"],
        )
        with self.engine.connect() as conn:
            conn = conn.execution_options(**self._read_options)
            return conn.execute(query).first() is not None

    def create_conversation(
        self,
        conversation: Mapping[str, Any],
        turn: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]] = (),
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert a new conversation with its opening turn (IntegrityError if the id exists)."""
        with self.engine.begin() as conn:
            conn.execute(_INSERT_CONVERSATION, [dict(conversation)])
            self._insert_rows(conn, turn, events, audit)

    @staticmethod
    def _insert_rows(
        conn: Connection,
        turn: Mapping[str, Any],
        events: Sequence[Mapping[str, Any]],
        audit: Mapping[str, Any] | None,
    ) -> None:
        # A list of parameter sets: no RETURNING of the generated id (nothing needs it).
        conn.execute(_INSERT_TURN, [dict(turn)])
        if events:
            conn.execute(_INSERT_EVENTS, [dict(e) for e in events])
        if audit is not None:
            conn.execute(_INSERT_AUDIT, [dict(audit)])

    def get(self, conversation_id: str) -> Conversation:
        with self._sessions() as db:
            conversation = db.get(Conversation, conversation_id)
            if conversation is None:
                raise SessionNotFound(conversation_id)
            return conversation

    def turns(self, conversation_id: str) -> list[Turn]:
        return self._log(Turn, conversation_id, Turn.turn_index)

    def stage_events(self, conversation_id: str) -> list[StageEvent]:
        return self._log(StageEvent, conversation_id, StageEvent.id)

    def compliance_decisions(self, conversation_id: str) -> list[ComplianceDecision]:
        return self._log(ComplianceDecision, conversation_id, ComplianceDecision.id)

    def _log(self, model: type[L], conversation_id: str, order: Any) -> list[L]:
        """A conversation's rows of one append-only log table, in ``order``."""
        with self._sessions() as db:
            query = select(model).where(model.conversation_id == conversation_id).order_by(order)
            return list(db.scalars(query))
