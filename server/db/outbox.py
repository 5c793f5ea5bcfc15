"""The outbox: each computer's server → client messages, numbered, kept until
the agent acknowledges them.

A computer's messages are numbered ``0, 1, 2, ...`` in the order they are
queued; ``computers.server_sequence`` is the number the next one gets. A
message stays until an exchange request's ``next-expected-sequence`` passes
it (the agent has processed it), so a lost reply is simply sent again.
``protocol.exchange.server_messages_to_send`` decides what a reply carries;
this module only stores.

Every method runs in the caller's transaction (``*_thd``), because queuing a
message always goes with another change: a delivery, a cancel, a registration.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa

from protocol import bpickle
from server.db.tables import computers, outbox


@dataclass(frozen=True)
class OutboxMessage:
    sequence: int
    message: dict
    activity_id: int | None


class OutboxConnector:
    """Table ``outbox`` (and the ``server_sequence`` counter of ``computers``)."""

    def __init__(self, db):
        self.db = db

    def append_thd(
        self,
        conn: sa.Connection,
        computer_id: int,
        messages: Sequence[dict],
        now: dt.datetime,
        activity_ids: Sequence[int | None] | None = None,
    ) -> int:
        """Queue ``messages`` for the computer; returns the number of the first.

        Two statements whatever the count: the counter moves by ``len(messages)``
        (row-locked, so concurrent appends never share a number), then one bulk
        insert. ``activity_ids`` (same length) links each message to its activity.
        """
        n = len(messages)
        if not n:
            return -1
        if activity_ids is not None and len(activity_ids) != n:
            raise ValueError("activity_ids must match messages")
        after = conn.execute(
            computers.update()
            .where(computers.c.id == computer_id)
            .values(server_sequence=computers.c.server_sequence + n)
            .returning(computers.c.server_sequence)
        ).scalar_one()
        first = after - n
        conn.execute(
            outbox.insert(),
            [
                {
                    "computer_id": computer_id,
                    "sequence": first + i,
                    "message": bpickle.dumps(m),
                    "activity_id": None if activity_ids is None else activity_ids[i],
                    "created_at": now,
                }
                for i, m in enumerate(messages)
            ],
        )
        return first

    def messages_thd(self, conn: sa.Connection, computer_id: int, from_sequence: int = 0) -> list[OutboxMessage]:
        """Kept messages numbered ``from_sequence`` and up, in order."""
        rows = conn.execute(
            sa.select(outbox.c.sequence, outbox.c.message, outbox.c.activity_id)
            .where(outbox.c.computer_id == computer_id, outbox.c.sequence >= from_sequence)
            .order_by(outbox.c.sequence)
        )
        return [OutboxMessage(r.sequence, bpickle.loads(r.message), r.activity_id) for r in rows]

    def oldest_thd(self, conn: sa.Connection, computer_id: int) -> int | None:
        """Number of the oldest kept message, or None when nothing is kept."""
        return conn.execute(
            sa.select(sa.func.min(outbox.c.sequence)).where(outbox.c.computer_id == computer_id)
        ).scalar()

    def delete_before_thd(self, conn: sa.Connection, computer_id: int, before: int) -> int:
        """Forget messages the agent has acknowledged (numbered below ``before``)."""
        return conn.execute(
            outbox.delete().where(outbox.c.computer_id == computer_id, outbox.c.sequence < before)
        ).rowcount

    def renumber_thd(self, conn: sa.Connection, computer_id: int, by: int) -> None:
        """Shift every kept number (and the counter) by ``by``, after the agent's
        count and ours disagreed (a resynchronisation).

        Two passes through negative numbers: a shift smaller than the number of
        kept messages would otherwise collide with the unique (computer, number)
        index halfway through, on SQLite and PostgreSQL alike.
        """
        if by == 0:
            return
        where = outbox.c.computer_id == computer_id
        conn.execute(outbox.update().where(where).values(sequence=-1 - (outbox.c.sequence + by)))
        conn.execute(outbox.update().where(where).values(sequence=-1 - outbox.c.sequence))
        conn.execute(
            computers.update()
            .where(computers.c.id == computer_id)
            .values(server_sequence=computers.c.server_sequence + by)
        )
