"""The message system's per-computer state and the queries of an exchange.

The columns live on ``computers`` (token hash, sequences, the agent's accepted
types); this connector reads and writes them for ``server.messagesystem``, and
answers the two questions an exchange, a ping and an attachment download ask:
"is there anything for this computer?" and "may it fetch this file?".

Deliverable work: a client activity of an *accepted*, not removed computer that
is ``queued``; ``scheduled`` whose ``deliver_after`` has come; or ``waiting``
whose time has come and whose prerequisite is met; and whose ``deliver_before``
has not passed (expired activities are left to the scheduler, which cancels
them with result code ``expired``). The prerequisite test is
``server.states.waiting_figure`` written as SQL, so that one indexed query
answers for any number of activities; a test checks it against
``ActivitiesConnector.prerequisite_met_thd``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import sqlite3
from dataclasses import dataclass

import sqlalchemy as sa

from server import states
from server.db.activities import Activity, _row_to_activity
from server.db.computers import ACCEPTED
from server.db.tables import activities, activity_attachments, attachments, computers, outbox

#: What :meth:`ExchangeStateConnector.idle_exchange_inline` returns when another
#: writer holds the database.
BUSY = object()
#: Idle exchanges committed in the reactor thread between two WAL checkpoints.
INLINE_CHECKPOINT_EVERY = 500


def prerequisite_met_sql(a) -> sa.ColumnElement[bool]:
    """SQL for "``a``'s ``wait_for`` is satisfied" (``states.waiting_figure`` >= threshold)."""
    pre = activities.alias("pre")
    threshold = sa.func.coalesce(a.c.wait_for_threshold, 100)
    single = sa.and_(
        pre.c.is_group == sa.false(),
        sa.or_(
            pre.c.state == states.SUCCEEDED,
            sa.and_(pre.c.state == states.IN_PROGRESS, pre.c.progress >= threshold),
        ),
    )
    # floor(100 * succeeded / total) >= t  <=>  100 * succeeded >= t * total, for whole t.
    group = sa.and_(
        pre.c.is_group == sa.true(),
        pre.c.children_count > 0,
        100 * pre.c.n_succeeded >= threshold * pre.c.children_count,
    )
    return sa.or_(
        a.c.wait_for_id.is_(None),
        threshold <= 0,
        sa.exists().where(pre.c.id == a.c.wait_for_id, sa.or_(single, group)),
    )


def deliverable_sql(a, now: dt.datetime) -> sa.ColumnElement[bool]:
    """SQL for "activity ``a`` (a row of ``activities``) can be delivered now".

    The computer's own condition (accepted) is the caller's.
    """
    time_has_come = sa.or_(a.c.deliver_after.is_(None), a.c.deliver_after <= now)
    return sa.and_(
        a.c.kind == states.CLIENT,
        a.c.is_group == sa.false(),
        sa.or_(
            a.c.state == states.QUEUED,
            sa.and_(a.c.state == states.SCHEDULED, time_has_come),
            sa.and_(a.c.state == states.WAITING, time_has_come, prerequisite_met_sql(a)),
        ),
        sa.or_(a.c.deliver_before.is_(None), a.c.deliver_before > now),
    )


@dataclass(frozen=True)
class ExchangeState:
    """One computer as an exchange sees it."""

    id: int
    status: str
    title: str
    account_name: str
    exchange_token_hash: str | None
    client_sequence: int
    server_sequence: int
    client_accepted_types: tuple[str, ...]
    client_accepted_types_hash: bytes | None
    client_api: str | None
    oldest_kept: int | None
    has_work: bool

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


def _state(row) -> ExchangeState:
    return ExchangeState(
        id=row.id,
        status=row.status,
        title=row.title,
        account_name=row.account_name,
        exchange_token_hash=row.exchange_token_hash,
        client_sequence=row.client_sequence,
        server_sequence=row.server_sequence,
        client_accepted_types=tuple(t for t in row.client_accepted_types.split(";") if t),
        client_accepted_types_hash=(
            bytes.fromhex(row.client_accepted_types_hash) if row.client_accepted_types_hash else None
        ),
        client_api=row.client_api,
        oldest_kept=row.oldest_kept,
        has_work=bool(row.has_work),
    )


class _RawConn:
    """What _Prepared needs of a connection: the dialect and a DBAPI connection."""

    def __init__(self, dialect, raw):
        self.dialect = dialect
        self.connection = raw


class ExchangeStateConnector:
    """Message-system state of computers (columns of ``computers``)."""

    def __init__(self, db):
        self.db = db
        self._inline_ok: bool | None = None
        self._inline_raw = None
        self._inline_commits = 0
        self._checkpointing = False
        sa.event.listen(db.engine, "engine_disposed", lambda _engine: self.close_inline())

    def load_thd(self, conn: sa.Connection, secure_id_hash: str, now: dt.datetime) -> ExchangeState | None:
        """The state of the computer with this secure id, or None (unknown or removed).

        One statement: the row (locked against a concurrent exchange of the same
        computer on PostgreSQL), the oldest kept outbox number and whether any
        activity is deliverable now (both on indexes).
        """
        q = _LOAD_FOR_UPDATE if conn.dialect.name == "postgresql" else _LOAD
        row = q.first(conn, {"secure_id_hash": secure_id_hash, "now": now})
        return None if row is None else _state(row)

    def idle_exchange_sync(self, secure_id_hash: str, token_hash: str | None, new_token_hash: str,
                           client_next_expected: int, client_api: str | None, now: dt.datetime):
        """The common case in its own short transaction on the driver's connection:
        if the computer is known, the token is right (or absent), nothing is kept
        in its outbox, its count is ours, its API unchanged and no work waits,
        store the new token hash and ``last_seen`` and return its
        :class:`ExchangeState`; otherwise change nothing and return None (the
        caller then runs the full exchange). Runs in the calling (database) thread.
        """
        engine = self.db.engine
        raw = engine.raw_connection()
        try:
            return self._idle_on(raw, engine.dialect, secure_id_hash, token_hash, new_token_hash,
                                 client_next_expected, client_api, now)
        finally:
            raw.close()

    # --- the idle exchange in the reactor thread (SQLite files only) -------------------

    @property
    def inline_idle(self) -> bool:
        """Whether :meth:`idle_exchange_inline` may be used: a SQLite file (a
        second connection to ``:memory:`` would be another database)."""
        if self._inline_ok is None:
            url = self.db.engine.url
            self._inline_ok = (url.get_backend_name() == "sqlite"
                               and url.database not in (None, "", ":memory:")
                               and not url.database.startswith("file::memory:")
                               and url.query.get("mode") != "memory")
        return self._inline_ok

    def idle_exchange_inline(self, secure_id_hash: str, token_hash: str | None, new_token_hash: str,
                             client_next_expected: int, client_api: str | None, now: dt.datetime):
        """:meth:`idle_exchange_sync` in the calling (reactor) thread, never waiting.

        A thread-pool hop costs more than the two indexed statements of an idle
        exchange on SQLite, so they run here, on a connection of their own that
        never waits for a lock (``busy_timeout`` 0: if another writer holds the
        database this returns :data:`BUSY` at once and the caller takes the
        thread pool) and never checkpoints the WAL itself (a checkpoint writes
        and syncs the database file: it is run in the thread pool every
        :data:`INLINE_CHECKPOINT_EVERY` commits instead).
        """
        raw = self._inline_raw
        if raw is None:
            raw = self._inline_raw = self._open_inline()
        try:
            state = self._idle_on(raw, self.db.engine.dialect, secure_id_hash, token_hash, new_token_hash,
                                  client_next_expected, client_api, now)
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return BUSY
            raise
        if state is not None:
            self._inline_commits += 1
            if self._inline_commits >= INLINE_CHECKPOINT_EVERY and not self._checkpointing:
                self._inline_commits = 0
                self._checkpointing = True
                d = self.db.runner(self._checkpoint_sync)
                d.addErrback(lambda f: None)  # the next one retries; pool connections checkpoint too
                d.addBoth(lambda _: setattr(self, "_checkpointing", False))
        return state

    def _open_inline(self):
        raw = self.db.engine.raw_connection()
        raw.detach()  # ours for good, with its own settings: never back in the pool
        cursor = raw.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        finally:
            cursor.close()
        return raw

    def _checkpoint_sync(self) -> None:
        raw = self.db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.close()
        finally:
            raw.close()

    def close_inline(self) -> None:
        """Close the reactor thread's connection (when the engine is disposed)."""
        raw, self._inline_raw = self._inline_raw, None
        if raw is not None:
            raw.close()

    def _idle_on(self, raw, dialect, secure_id_hash, token_hash, new_token_hash, client_next_expected,
                 client_api, now):
        sqlite = dialect.name == "sqlite"
        cursor = raw.cursor()
        if sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        try:
            conn = _RawConn(dialect, raw)
            q = _LOAD if sqlite else _LOAD_FOR_UPDATE
            row = q.first(conn, {"secure_id_hash": secure_id_hash, "now": now})
            state = None if row is None else _state(row)
            if (state is None or state.oldest_kept is not None or state.has_work
                    or state.server_sequence != client_next_expected
                    or (client_api is not None and client_api != state.client_api)
                    or (token_hash is not None and state.exchange_token_hash is not None
                        and not hmac.compare_digest(token_hash, state.exchange_token_hash))):
                raw.rollback() if not sqlite else cursor.execute("ROLLBACK")
                return None
            _SAVE_IDLE.run(conn, {"cid": state.id, "exchange_token_hash": new_token_hash, "last_seen": now})
            cursor.execute("COMMIT") if sqlite else raw.commit()
            return state
        except BaseException:
            if sqlite:
                if raw.driver_connection.in_transaction:
                    cursor.execute("ROLLBACK")
            else:
                raw.rollback()
            raise
        finally:
            cursor.close()

    def save_thd(self, conn: sa.Connection, computer_id: int, **values) -> None:
        """Write exchange bookkeeping (``exchange_token_hash``, ``last_seen``,
        ``client_sequence``, ``client_accepted_types``, ...) in one UPDATE."""
        if values.keys() == {"exchange_token_hash", "last_seen"}:
            # The idle exchange: a statement built once (building one costs more
            # than running it).
            _SAVE_IDLE.run(conn, {"cid": computer_id, **values})
            return
        conn.execute(computers.update().where(computers.c.id == computer_id).values(**values))

    def client_accepted_types_thd(self, conn: sa.Connection, computer_id: int) -> tuple[str, ...]:
        text = conn.execute(
            sa.select(computers.c.client_accepted_types).where(computers.c.id == computer_id)
        ).scalar()
        return tuple(t for t in (text or "").split(";") if t)

    def deliverable_thd(self, conn: sa.Connection, computer_id: int, now: dt.datetime) -> list[Activity]:
        """The computer's deliverable activities, oldest first, locked on PostgreSQL
        (a concurrent cancel waits for the delivery to commit, then sees in-progress)."""
        a = activities
        q = sa.select(a).where(a.c.computer_id == computer_id, deliverable_sql(a, now)).order_by(a.c.id)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(of=a)
        return [_row_to_activity(r) for r in conn.execute(q)]

    def ping(self, insecure_id: int, now: dt.datetime):
        return self.db.run(self.ping_thd, insecure_id, now)

    def ping_thd(self, conn: sa.Connection, insecure_id: int, now: dt.datetime) -> bool:
        """Whether the computer has something to fetch now: kept outbox messages, or
        deliverable work (accepted computers only). One statement on indexes."""
        return bool(conn.execute(_PING, {"insecure_id": insecure_id, "now": now}).scalar())

    def attachment(self, secure_id_hash: str, attachment_id: int):
        return self.db.run(self.attachment_thd, secure_id_hash, attachment_id)

    def attachment_thd(self, conn: sa.Connection, secure_id_hash: str, attachment_id: int):
        """``("ok", name, data)``, ``("unknown-computer", None, None)``,
        ``("not-found", None, None)`` or ``("forbidden", None, None)``.

        A computer may fetch an attachment only through one of *its* activities
        that has been delivered (in progress now, or delivered at some time).
        """
        cid = conn.execute(
            sa.select(computers.c.id).where(
                computers.c.secure_id_hash == secure_id_hash, computers.c.removed_at.is_(None)
            )
        ).scalar()
        if cid is None:
            return "unknown-computer", None, None
        aa, a, t = activity_attachments, activities, attachments
        allowed = sa.exists().where(
            aa.c.attachment_id == t.c.id,
            a.c.id == aa.c.activity_id,
            a.c.computer_id == cid,
            sa.or_(a.c.state == states.IN_PROGRESS, a.c.delivered_at.is_not(None)),
        )
        row = conn.execute(
            sa.select(t.c.name, t.c.data, allowed.label("allowed")).where(t.c.id == attachment_id)
        ).first()
        if row is None:
            return "not-found", None, None
        if not row.allowed:
            return "forbidden", None, None
        return "ok", row.name, row.data


# --- statements built once -------------------------------------------------------------
# Building these (an alias of a wide table, nested conditions) costs several
# times more than running them on an index; with bound parameters they are built
# at import and SQLAlchemy's compiled cache does the rest.


def _load_statement() -> sa.Select:
    c, a = computers, activities
    now = sa.bindparam("now", type_=activities.c.deliver_after.type)
    oldest = sa.select(sa.func.min(outbox.c.sequence)).where(outbox.c.computer_id == c.c.id).scalar_subquery()
    work = sa.exists().where(a.c.computer_id == c.c.id, deliverable_sql(a, now))
    return sa.select(
        c.c.id, c.c.status, c.c.title, c.c.account_name, c.c.exchange_token_hash,
        c.c.client_sequence, c.c.server_sequence, c.c.client_accepted_types,
        c.c.client_accepted_types_hash, c.c.client_api, oldest.label("oldest_kept"),
        sa.and_(c.c.status == ACCEPTED, work).label("has_work"),
    ).where(c.c.secure_id_hash == sa.bindparam("secure_id_hash"), c.c.removed_at.is_(None))


def _ping_statement() -> sa.Select:
    c, a = computers, activities
    now = sa.bindparam("now", type_=activities.c.deliver_after.type)
    kept = sa.exists().where(outbox.c.computer_id == c.c.id)
    work = sa.exists().where(a.c.computer_id == c.c.id, deliverable_sql(a, now))
    return sa.select(sa.or_(kept, sa.and_(c.c.status == ACCEPTED, work))).where(
        c.c.id == sa.bindparam("insecure_id"), c.c.removed_at.is_(None))


class _Prepared:
    """A statement of the idle exchange, compiled once per dialect and run on the
    DBAPI cursor of the caller's connection (inside its transaction).

    SQLAlchemy's per-execution machinery costs several times what SQLite needs
    to run these indexed statements; this keeps SQLAlchemy's compiler and type
    conversion (bind processors) but skips that machinery. Result values come
    back as the driver gives them: only ints, text and booleans are read.
    """

    def __init__(self, statement):
        self.statement = statement
        self._compiled: dict[str, tuple] = {}

    def _prepare(self, dialect):
        compiled = self.statement.compile(dialect=dialect)
        processors = {}
        for name, bind in compiled.binds.items():
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                processors[name] = proc
        positional = dialect.paramstyle in ("qmark", "numeric", "format")
        order = list(compiled.positiontup) if positional else None
        names = [c[0] for c in compiled._result_columns] if hasattr(compiled, "_result_columns") else []
        # The statement's own constants, converted once; a call then only fills
        # in and converts its parameters (``construct_params`` per call costs
        # as much as SQLite's work on the idle exchange).
        constants = compiled.construct_params(_check=False)
        required = frozenset(n for n, b in compiled.binds.items() if b.required and n in constants)
        for name, value in constants.items():
            if name not in required and name in processors:
                constants[name] = processors[name](value)
        entry = (str(compiled), compiled, processors, order, names, constants, required)
        self._compiled[dialect.name] = entry
        return entry

    def _values(self, entry, params):
        sql, compiled, processors, order, names, constants, required = entry
        if params.keys() == required:
            values = {**constants}
            for name, value in params.items():
                proc = processors.get(name)
                values[name] = value if proc is None else proc(value)
        else:  # anything unexpected: SQLAlchemy's own checks and errors
            values = compiled.construct_params(params)
            for name, proc in processors.items():
                values[name] = proc(values[name])
        return [values[n] for n in order] if order is not None else values

    def _run(self, conn, params):
        entry = self._compiled.get(conn.dialect.name) or self._prepare(conn.dialect)
        cursor = conn.connection.cursor()
        cursor.execute(entry[0], self._values(entry, params))
        return cursor, entry[4]

    def first(self, conn, params):
        cursor, names = self._run(conn, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else _Row(dict(zip(names, row)))

    def run(self, conn, params) -> int:
        cursor, _ = self._run(conn, params)
        try:
            return cursor.rowcount
        finally:
            cursor.close()


class _Row:
    def __init__(self, mapping):
        self.__dict__.update(mapping)


_LOAD = _Prepared(_load_statement())
_LOAD_FOR_UPDATE = _Prepared(_load_statement().with_for_update(of=computers))
_PING = _ping_statement()
_SAVE_IDLE = _Prepared(computers.update().where(computers.c.id == sa.bindparam("cid")).values(
    exchange_token_hash=sa.bindparam("exchange_token_hash"), last_seen=sa.bindparam("last_seen")))
