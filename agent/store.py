"""The agent's durable state: one small SQLite file in ``data_path``.

Tables (SQLAlchemy Core):

- ``state``: one row: identity (secure id, insecure id, the old secure id to send
  as ``clone_secure_id``), server uuid and API, the exchange token, the outgoing
  ``sequence`` and ``pending_offset``, the incoming ``server_sequence``, the
  server's accepted types and intervals the server set.
- ``outbox``: messages to the server, kept until the server acknowledges them
  (the last acknowledged batch stays until the next ack, so a server that lost it
  can ask again). ``held`` messages are of types the server does not accept yet.
- ``operations``: one row per incoming operation, keyed by (server uuid, secure id,
  operation id), with its state (``running``, ``done``, ``interrupted``) and the
  process group and start time of what it runs.

Every method is one short SQLite transaction, so ``kill -9`` at any point leaves
the file consistent. The transitions that must be atomic are: recording an
incoming operation together with advancing ``server_sequence``; and marking an
operation finished together with queueing its result.

The store is synchronous on purpose: it is tiny and local, and a thread pool would
cost more memory than the few milliseconds it saves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
)

from protocol import bpickle

metadata = MetaData()

state_table = Table(
    "state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("secure_id", LargeBinary),
    Column("insecure_id", Integer),
    Column("clone_secure_id", LargeBinary),
    Column("server_uuid", String),
    Column("server_api", LargeBinary),
    Column("exchange_token", LargeBinary),
    Column("sequence", Integer, nullable=False, default=0),
    Column("pending_offset", Integer, nullable=False, default=0),
    Column("server_sequence", Integer, nullable=False, default=0),
    Column("accepted_types", Text, nullable=False, default="[]"),
    Column("intervals", Text, nullable=False, default="{}"),
)

outbox_table = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("type", String, nullable=False),
    Column("held", Boolean, nullable=False, default=False),
    Column("body", LargeBinary, nullable=False),
)

operations_table = Table(
    "operations",
    metadata,
    Column("server_uuid", String, nullable=False),
    Column("secure_id", LargeBinary, nullable=False),
    Column("operation_id", Integer, nullable=False),
    Column("type", String, nullable=False),
    Column("state", String, nullable=False),
    Column("pgid", Integer),
    Column("process_start", Float),
    Column("received_at", Float, nullable=False),
    PrimaryKeyConstraint("server_uuid", "secure_id", "operation_id"),
)

RUNNING = "running"
DONE = "done"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class AgentState:
    """A snapshot of the ``state`` row."""

    secure_id: bytes | None = None
    insecure_id: int | None = None
    clone_secure_id: bytes | None = None
    server_uuid: str | None = None
    server_api: bytes | None = None
    exchange_token: bytes | None = None
    sequence: int = 0
    pending_offset: int = 0
    server_sequence: int = 0
    accepted_types: tuple[str, ...] = ()
    intervals: dict | None = None


@dataclass(frozen=True)
class OperationKey:
    """What identifies an operation for ever: operation ids are unique per server
    database, and a re-registered computer is a new identity."""

    server_uuid: str
    secure_id: bytes
    operation_id: int


@dataclass(frozen=True)
class OperationRecord:
    key: OperationKey
    type: str
    state: str
    pgid: int | None
    process_start: float | None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL + synchronous=FULL: each commit is durable, and readers never block.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


class AgentStore:
    """The agent's SQLite store. ``AgentStore.open(data_path)`` in production;
    tests may pass any SQLite URL to the constructor."""

    FILENAME = "agent.sqlite"

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            if conn.execute(select(state_table.c.id)).first() is None:
                conn.execute(state_table.insert().values(id=1))

    @classmethod
    def open(cls, data_path: str | os.PathLike) -> AgentStore:
        path = Path(data_path)
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        return cls(f"sqlite:///{path / cls.FILENAME}")

    def close(self) -> None:
        self.engine.dispose()

    # --- state ------------------------------------------------------------------

    def get_state(self) -> AgentState:
        with self.engine.connect() as conn:
            row = conn.execute(select(state_table).where(state_table.c.id == 1)).mappings().one()
        return self._state_from_row(row)

    @staticmethod
    def _state_from_row(row) -> AgentState:
        return AgentState(
            secure_id=row["secure_id"],
            insecure_id=row["insecure_id"],
            clone_secure_id=row["clone_secure_id"],
            server_uuid=row["server_uuid"],
            server_api=row["server_api"],
            exchange_token=row["exchange_token"],
            sequence=row["sequence"],
            pending_offset=row["pending_offset"],
            server_sequence=row["server_sequence"],
            accepted_types=tuple(json.loads(row["accepted_types"])),
            intervals=json.loads(row["intervals"]) or None,
        )

    def update_state(self, **values) -> None:
        """Set columns of the state row (``accepted_types`` a sequence, ``intervals``
        a dict), in one transaction."""
        with self.engine.begin() as conn:
            self._update_state(conn, values)

    @staticmethod
    def _update_state(conn, values: dict) -> None:
        values = dict(values)
        if "accepted_types" in values:
            values["accepted_types"] = json.dumps(sorted(set(values["accepted_types"])))
        if "intervals" in values:
            values["intervals"] = json.dumps(values["intervals"] or {})
        if values:
            conn.execute(state_table.update().where(state_table.c.id == 1).values(**values))

    def take_exchange_token(self) -> bytes | None:
        """Return the held token and forget it durably, before an exchange is sent:
        a crash mid-exchange then never leaves the agent holding a token the server
        already rotated."""
        with self.engine.begin() as conn:
            token = conn.execute(select(state_table.c.exchange_token)).scalar_one()
            if token is not None:
                conn.execute(state_table.update().values(exchange_token=None))
        return token

    # --- outbox -----------------------------------------------------------------

    def add_message(self, message: dict, conn=None) -> int:
        """Queue ``message`` (a dict with a str ``type``); held if the server does not
        accept its type yet. Returns its id."""
        if conn is None:
            with self.engine.begin() as conn:
                return self.add_message(message, conn)
        accepted = json.loads(conn.execute(select(state_table.c.accepted_types)).scalar_one())
        result = conn.execute(
            outbox_table.insert().values(
                type=message["type"], held=message["type"] not in accepted, body=bpickle.dumps(message)
            )
        )
        return result.inserted_primary_key[0]

    def _unheld_ids(self, conn) -> list[int]:
        q = select(outbox_table.c.id).where(outbox_table.c.held.is_(False)).order_by(outbox_table.c.id)
        return [r[0] for r in conn.execute(q)]

    def pending_messages(self, limit: int) -> list[dict]:
        """Up to ``limit`` unsent (not held) messages, oldest first: the ones after
        ``pending_offset`` among the retained ones."""
        with self.engine.connect() as conn:
            offset = conn.execute(select(state_table.c.pending_offset)).scalar_one()
            q = (
                select(outbox_table.c.body)
                .where(outbox_table.c.held.is_(False))
                .order_by(outbox_table.c.id)
                .offset(offset)
                .limit(limit)
            )
            return [bpickle.loads(r[0]) for r in conn.execute(q)]

    def count_pending(self) -> int:
        with self.engine.connect() as conn:
            offset = conn.execute(select(state_table.c.pending_offset)).scalar_one()
            total = conn.execute(
                select(func.count()).select_from(outbox_table).where(outbox_table.c.held.is_(False))
            ).scalar_one()
        return max(0, total - offset)

    def count_held(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(outbox_table).where(outbox_table.c.held.is_(True))
            ).scalar_one()

    def apply_ack(self, action: str, sequence: int, pending_offset: int, delete_retained: bool) -> None:
        """Apply the server's ``next-expected-sequence`` as decided by
        ``protocol.exchange.client_ack``: optionally drop the messages retained
        before the old offset (the previously acknowledged batch), then set the
        sequence and offset."""
        with self.engine.begin() as conn:
            old_offset = conn.execute(select(state_table.c.pending_offset)).scalar_one()
            if delete_retained and old_offset > 0:
                doomed = self._unheld_ids(conn)[:old_offset]
                conn.execute(outbox_table.delete().where(outbox_table.c.id.in_(doomed)))
            conn.execute(state_table.update().values(sequence=sequence, pending_offset=pending_offset))

    def delete_all_messages(self) -> None:
        """Forget every queued message (registration starts afresh, as landscape's)."""
        with self.engine.begin() as conn:
            conn.execute(outbox_table.delete())
            conn.execute(state_table.update().values(pending_offset=0))

    def set_accepted_types(self, types: Iterable[str]) -> bool:
        """Store the server's accepted types; release held messages whose type is now
        accepted (to the end of the queue) and hold pending ones whose type no longer
        is. Returns True if some message became sendable."""
        types = sorted(set(types))
        with self.engine.begin() as conn:
            self._update_state(conn, {"accepted_types": types})
            offset = conn.execute(select(state_table.c.pending_offset)).scalar_one()
            # Pending (unsent) messages of types no longer accepted become held.
            pending_ids = self._unheld_ids(conn)[offset:]
            if pending_ids:
                conn.execute(
                    outbox_table.update()
                    .where(outbox_table.c.id.in_(pending_ids), outbox_table.c.type.not_in(types))
                    .values(held=True)
                )
            released = conn.execute(
                select(outbox_table.c.id, outbox_table.c.type, outbox_table.c.body)
                .where(outbox_table.c.held.is_(True), outbox_table.c.type.in_(types))
                .order_by(outbox_table.c.id)
            ).all()
            for row in released:
                # Re-inserted at the end so it lands after the pending offset.
                conn.execute(outbox_table.delete().where(outbox_table.c.id == row.id))
                conn.execute(outbox_table.insert().values(type=row.type, held=False, body=row.body))
        return bool(released)

    # --- operations ---------------------------------------------------------------

    def begin_message(self, server_sequence: int, key: OperationKey | None, type_: str, now: float) -> bool:
        """Consume one incoming message: advance ``server_sequence`` and, for an
        operation, record it as running, in one transaction. Returns False (and
        records nothing new) if the operation was already received."""
        with self.engine.begin() as conn:
            conn.execute(state_table.update().values(server_sequence=server_sequence))
            if key is None:
                return True
            # One process owns this file, so check-then-insert cannot race.
            if conn.execute(select(operations_table.c.state).where(*self._key_clause(key))).first():
                return False
            conn.execute(
                operations_table.insert().values(
                    server_uuid=key.server_uuid,
                    secure_id=key.secure_id,
                    operation_id=key.operation_id,
                    type=type_,
                    state=RUNNING,
                    received_at=now,
                )
            )
        return True

    def set_operation_process(self, key: OperationKey, pgid: int, start_time: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                operations_table.update()
                .where(*self._key_clause(key))
                .values(pgid=int(pgid), process_start=float(start_time))
            )

    def finish_operation(self, key: OperationKey, result: dict | None, state: str = DONE) -> bool:
        """Mark a running operation finished and queue ``result`` (if not None), in
        one transaction. Returns False, queueing nothing, if it was not running."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                operations_table.update()
                .where(*self._key_clause(key), operations_table.c.state == RUNNING)
                .values(state=state)
            ).rowcount
            if updated != 1:
                return False
            if result is not None:
                self.add_message(result, conn)
        return True

    def get_operation(self, key: OperationKey) -> OperationRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(operations_table).where(*self._key_clause(key))).first()
        return None if row is None else self._op(row)

    def running_operations(self) -> list[OperationRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(operations_table).where(operations_table.c.state == RUNNING)
            ).all()
        return [self._op(r) for r in rows]

    @staticmethod
    def _op(row) -> OperationRecord:
        return OperationRecord(
            key=OperationKey(row.server_uuid, row.secure_id, row.operation_id),
            type=row.type,
            state=row.state,
            pgid=row.pgid,
            process_start=row.process_start,
        )

    @staticmethod
    def _key_clause(key: OperationKey):
        return (
            operations_table.c.server_uuid == key.server_uuid,
            operations_table.c.secure_id == key.secure_id,
            operations_table.c.operation_id == key.operation_id,
        )

    def all_messages(self) -> list[tuple[bool, dict]]:
        """Every queued message with its held flag, oldest first (for tests and
        diagnostics)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox_table.c.held, outbox_table.c.body).order_by(outbox_table.c.id))
            return [(bool(r.held), bpickle.loads(r.body)) for r in rows]
