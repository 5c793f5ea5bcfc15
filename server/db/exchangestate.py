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
from dataclasses import dataclass

import sqlalchemy as sa

from server import states
from server.db.activities import Activity, _row_to_activity
from server.db.computers import ACCEPTED
from server.db.tables import activities, activity_attachments, attachments, computers, outbox


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
    oldest_kept: int | None
    has_work: bool

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


class ExchangeStateConnector:
    """Message-system state of computers (columns of ``computers``)."""

    def __init__(self, db):
        self.db = db

    def load_thd(self, conn: sa.Connection, secure_id_hash: str, now: dt.datetime) -> ExchangeState | None:
        """The state of the computer with this secure id, or None (unknown or removed).

        One statement: the row (locked against a concurrent exchange of the same
        computer on PostgreSQL), the oldest kept outbox number and whether any
        activity is deliverable now (both on indexes).
        """
        c = computers
        a = activities
        oldest = (
            sa.select(sa.func.min(outbox.c.sequence))
            .where(outbox.c.computer_id == c.c.id)
            .scalar_subquery()
        )
        work = sa.exists().where(a.c.computer_id == c.c.id, deliverable_sql(a, now))
        q = (
            sa.select(
                c.c.id, c.c.status, c.c.title, c.c.account_name, c.c.exchange_token_hash,
                c.c.client_sequence, c.c.server_sequence, c.c.client_accepted_types,
                c.c.client_accepted_types_hash, oldest.label("oldest_kept"),
                sa.and_(c.c.status == ACCEPTED, work).label("has_work"),
            )
            .where(c.c.secure_id_hash == secure_id_hash, c.c.removed_at.is_(None))
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(of=c)
        row = conn.execute(q).first()
        if row is None:
            return None
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
            oldest_kept=row.oldest_kept,
            has_work=bool(row.has_work),
        )

    def save_thd(self, conn: sa.Connection, computer_id: int, **values) -> None:
        """Write exchange bookkeeping (``exchange_token_hash``, ``last_seen``,
        ``client_sequence``, ``client_accepted_types``, ...) in one UPDATE."""
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
        c, a = computers, activities
        kept = sa.exists().where(outbox.c.computer_id == c.c.id)
        work = sa.exists().where(a.c.computer_id == c.c.id, deliverable_sql(a, now))
        q = sa.select(sa.or_(kept, sa.and_(c.c.status == ACCEPTED, work))).where(
            c.c.id == insecure_id, c.c.removed_at.is_(None)
        )
        return bool(conn.execute(q).scalar())

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
