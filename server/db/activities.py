"""Activities and their history: creation (single or group), compare-and-set
transitions, administrator verbs, agent results.

Every change of state is one ``UPDATE ... WHERE id = :id AND state = :expected``
that must touch exactly one row, plus a history row, plus (for a group child) the
parent's per-state counters and derived state, all in the caller's transaction.
Concurrent changes of children of one parent serialise on the parent's row: the
counter ``UPDATE`` takes its row lock on PostgreSQL (SQLite serialises writers).

Methods named ``*_thd`` take a ``Connection`` and run inside a transaction the
caller owns (other connectors and services compose them); the public methods
without the suffix run one transaction through the database's runner and return
Deferreds.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import sqlalchemy as sa

from protocol import codes
from server import states
from server.db.tables import activities, activity_history, activity_attachments

COUNTER_COLUMNS: dict[str, str] = {s: f"n_{s.replace('-', '_')}" for s in states.STATES}


def target_values(to: str, kind: str, now: dt.datetime, blocked_reason: str | None = None) -> dict[str, Any]:
    """The columns any move of a ``kind`` activity to ``to`` sets, whoever moves it.

    The one definition shared by every transition method; a caller's own values
    are laid over it (they win, e.g. a provisional cancel keeps its deadline).
    """
    fixed: dict[str, Any] = {
        "state": to,
        "modified_at": now,
        "blocked_reason": blocked_reason if to == states.BLOCKED else None,
    }
    if to in states.FINAL_STATES:
        fixed.update(completed_at=now, lease_expires_at=None, answer_deadline=None)
    if to == states.IN_PROGRESS and kind == states.CLIENT:
        fixed["delivered_at"] = now
    if to == states.QUEUED and kind == states.SERVER:
        # (Re)entering the queue: the publisher must publish it again (an
        # earlier message, if any, was dropped while it was not queued).
        fixed["published_at"] = None
    return fixed


def parent_deltas(moved: Iterable[tuple[int | None, str]], to: str) -> dict[int, dict[str, int]]:
    """Per-parent counter deltas for children that left the given states for ``to``.

    ``moved`` holds ``(parent_id, from_state)`` per moved activity; parentless
    ones and moves that keep the state count for nothing.
    """
    deltas: dict[int, dict[str, int]] = {}
    for parent_id, old in moved:
        if parent_id is not None and old != to:
            d = deltas.setdefault(parent_id, {})
            d[old] = d.get(old, 0) - 1
            d[to] = d.get(to, 0) + 1
    return deltas


@dataclass(frozen=True)
class Activity:
    """One activity as stored. Times are UTC-aware datetimes."""

    id: int
    kind: str
    type: str
    summary: str
    creator: str
    computer_id: int | None
    parent_id: int | None
    origin_id: int | None
    is_group: bool
    state: str
    blocked_reason: str | None
    cancel_provisional: bool
    parameters: dict
    created_at: dt.datetime
    approved_at: dt.datetime | None
    delivered_at: dt.datetime | None
    completed_at: dt.datetime | None
    modified_at: dt.datetime
    deliver_after: dt.datetime | None
    deliver_before: dt.datetime | None
    deliver_delay_window: int | None
    deliver_delay: float | None
    requires_approval: bool
    wait_for_id: int | None
    wait_for_threshold: int | None
    result_code: int | None
    result_text: str | None
    progress: int
    answer_deadline: dt.datetime | None
    published_at: dt.datetime | None
    claimed_by: str | None
    lease_expires_at: dt.datetime | None
    retry_count: int
    children_count: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def result_name(self) -> str | None:
        return codes.result_name(self.result_code)

    @property
    def is_final(self) -> bool:
        return self.state in states.FINAL_STATES and not self.cancel_provisional

    @property
    def display_progress(self) -> int:
        if self.is_group:
            return states.group_progress(self.counts)
        return states.display_progress(self.state, self.progress)


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    activity_id: int
    at: dt.datetime
    event: str  # "transition", or the name of a notable event
    from_state: str | None
    to_state: str | None
    actor: str
    reason: str
    computer_id: int | None


@dataclass(frozen=True)
class NewActivity:
    """A validated request to create activities.

    ``computer_ids``: for a client type, one activity per computer (two or more
    make a group); empty for a server type.
    """

    kind: str
    type: str
    parameters: dict
    creator: str
    summary: str = ""
    computer_ids: Sequence[int] = ()
    deliver_after: dt.datetime | None = None
    deliver_before: dt.datetime | None = None
    deliver_delay_window: int | None = None
    requires_approval: bool = False
    wait_for_id: int | None = None
    wait_for_threshold: int = 100
    origin_id: int | None = None
    attachment_ids: Sequence[int] = ()


class ActivityNotFound(LookupError):
    def __init__(self, activity_id: int):
        super().__init__(f"no activity {activity_id}")
        self.activity_id = activity_id


class LostRace(states.TransitionError):
    """The activity changed between the read and the compare-and-set."""


def _row_to_activity(row: sa.Row) -> Activity:
    m = row._mapping
    counts = {s: m[col] for s, col in COUNTER_COLUMNS.items()}
    return Activity(
        **{f: m[f] for f in Activity.__dataclass_fields__ if f not in ("counts",)},
        counts=counts if m["is_group"] else {},
    )


class ActivitiesConnector:
    """Activities and their history (tables ``activities``, ``activity_history``)."""

    def __init__(self, db, *, rng: random.Random | None = None):
        self.db = db
        self._rng = rng or random.Random()
        #: Called as ``listener(conn, activity, now)`` inside the transaction that
        #: cancels a non-final activity, before its state changes: how the message
        #: system tells an agent (``cancel-activity``) and the job-handler a job.
        self.cancel_listeners: list = []

    # --- reading ----------------------------------------------------------------

    def get(self, activity_id: int):
        return self.db.run(self.get_thd, activity_id)

    def get_thd(self, conn: sa.Connection, activity_id: int) -> Activity:
        row = conn.execute(sa.select(activities).where(activities.c.id == activity_id)).first()
        if row is None:
            raise ActivityNotFound(activity_id)
        return _row_to_activity(row)

    def history(self, activity_id: int):
        return self.db.run(self.history_thd, activity_id)

    def history_thd(self, conn: sa.Connection, activity_id: int) -> list[HistoryEntry]:
        rows = conn.execute(
            sa.select(activity_history)
            .where(activity_history.c.activity_id == activity_id)
            .order_by(activity_history.c.id)
        )
        return [HistoryEntry(**r._mapping) for r in rows]

    def events(self, **filters):
        return self.db.run(self.events_thd, **filters)

    def events_thd(
        self,
        conn: sa.Connection,
        *,
        after: dt.datetime | None = None,
        before: dt.datetime | None = None,
        activity_id: int | None = None,
        computer_id: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[HistoryEntry]]:
        """Recent transitions and events across activities, newest first."""
        q = sa.select(activity_history)
        conds = []
        if after is not None:
            conds.append(activity_history.c.at >= after)
        if before is not None:
            conds.append(activity_history.c.at < before)
        if activity_id is not None:
            conds.append(activity_history.c.activity_id == activity_id)
        if computer_id is not None:
            conds.append(activity_history.c.computer_id == computer_id)
        if conds:
            q = q.where(*conds)
        count = conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar_one()
        rows = conn.execute(q.order_by(activity_history.c.id.desc()).limit(limit).offset(offset))
        return count, [HistoryEntry(**r._mapping) for r in rows]

    def list(self, **filters):
        return self.db.run(self.list_thd, **filters)

    def list_thd(
        self,
        conn: sa.Connection,
        *,
        state: str | None = None,
        type: str | None = None,
        computer_id: int | None = None,
        parent_id: int | None = None,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Activity]]:
        """Activities matching every given filter, newest first, and their count."""
        conds = []
        if state is not None:
            conds.append(activities.c.state == state)
        if type is not None:
            conds.append(activities.c.type == type)
        if computer_id is not None:
            conds.append(activities.c.computer_id == computer_id)
        if parent_id is not None:
            conds.append(activities.c.parent_id == parent_id)
        if created_after is not None:
            conds.append(activities.c.created_at >= created_after)
        if created_before is not None:
            conds.append(activities.c.created_at < created_before)
        where = sa.and_(sa.true(), *conds)
        count = conn.execute(sa.select(sa.func.count()).select_from(activities).where(where)).scalar_one()
        rows = conn.execute(
            sa.select(activities).where(where).order_by(activities.c.id.desc()).limit(limit).offset(offset)
        )
        return count, [_row_to_activity(r) for r in rows]

    # --- creation -----------------------------------------------------------------

    def create(self, new: NewActivity, now: dt.datetime):
        return self.db.run(self.create_thd, new, now)

    def create_thd(self, conn: sa.Connection, new: NewActivity, now: dt.datetime) -> Activity:
        """Create one activity, or a parent and one child per computer, in the
        caller's transaction; children are inserted in bulk. Returns the activity
        (the parent for a group)."""
        if new.kind not in states.KINDS:
            raise ValueError(f"unknown kind {new.kind!r}")
        computer_ids = list(new.computer_ids)
        if new.kind == states.CLIENT and not computer_ids:
            raise ValueError("a client activity needs at least one computer")
        if new.kind == states.SERVER and computer_ids:
            raise ValueError("a server activity has no computer")
        met = self.prerequisite_met_thd(conn, new.wait_for_id, new.wait_for_threshold)
        window = new.deliver_delay_window or None
        is_group = len(computer_ids) >= 2
        base = {
            "kind": new.kind,
            "type": new.type,
            "summary": new.summary,
            "creator": new.creator,
            "origin_id": new.origin_id,
            "parameters": new.parameters,
            "created_at": now,
            "modified_at": now,
            "deliver_before": new.deliver_before,
            "deliver_delay_window": window,
            "requires_approval": new.requires_approval,
            "wait_for_id": new.wait_for_id,
            "wait_for_threshold": new.wait_for_threshold if new.wait_for_id is not None else None,
        }

        def placed(delay: float | None) -> dict[str, Any]:
            after = new.deliver_after
            if delay:
                after = (after or now) + dt.timedelta(seconds=delay)
            p = states.initial_placement(
                requires_approval=new.requires_approval,
                prerequisite_met=met,
                time_has_come=after is None or after <= now,
            )
            return {
                **base,
                "deliver_after": after,
                "deliver_delay": delay,
                "state": p.state,
                "blocked_reason": p.blocked_reason,
            }

        if not is_group:
            row = placed(self._rng.uniform(0, window) if window else None)
            row["computer_id"] = computer_ids[0] if computer_ids else None
            activity_id = conn.execute(activities.insert().returning(activities.c.id), row).scalar_one()
            self._link_attachments_thd(conn, [activity_id], new.attachment_ids)
            self._history_many_thd(conn, [(activity_id, row["computer_id"], row["state"])], now, new.creator)
            return self.get_thd(conn, activity_id)

        children = []
        for cid in computer_ids:
            row = placed(self._rng.uniform(0, window) if window else None)
            row["computer_id"] = cid
            children.append(row)
        counts = {s: 0 for s in states.STATES}
        for c in children:
            counts[c["state"]] += 1
        parent_state = states.group_state(counts)
        parent = {
            **base,
            "is_group": True,
            "deliver_after": new.deliver_after,
            "state": parent_state,
            "blocked_reason": states.APPROVAL if parent_state == states.BLOCKED else None,
            "children_count": len(children),
            **{COUNTER_COLUMNS[s]: n for s, n in counts.items()},
        }
        parent_id = conn.execute(activities.insert().returning(activities.c.id), parent).scalar_one()
        for c in children:
            c["parent_id"] = parent_id
        if len(set(computer_ids)) == len(computer_ids):
            # One executemany without RETURNING, then the ids by computer: on
            # SQLite, SQLAlchemy cannot batch an ordered RETURNING and sends one
            # INSERT per row (5x slower for a 10,000-computer fan-out).
            conn.execute(activities.insert(), children)
            by_computer = dict(conn.execute(
                sa.select(activities.c.computer_id, activities.c.id).where(activities.c.parent_id == parent_id)
            ).all())
            child_ids = [by_computer[c["computer_id"]] for c in children]
        else:
            child_ids = [
                r.id
                for r in conn.execute(
                    activities.insert().returning(activities.c.id, sort_by_parameter_order=True), children
                )
            ]
        self._link_attachments_thd(conn, [parent_id, *child_ids], new.attachment_ids)
        self._history_many_thd(
            conn,
            [(parent_id, None, parent_state)] + [(i, c["computer_id"], c["state"]) for i, c in zip(child_ids, children)],
            now,
            new.creator,
        )
        return self.get_thd(conn, parent_id)

    def _link_attachments_thd(self, conn, activity_ids: list[int], attachment_ids: Iterable[int]) -> None:
        rows = [{"activity_id": a, "attachment_id": t} for a in activity_ids for t in set(attachment_ids)]
        if rows:
            conn.execute(activity_attachments.insert(), rows)

    def _history_many_thd(self, conn, created: list[tuple[int, int | None, str]], now, actor: str) -> None:
        conn.execute(
            activity_history.insert(),
            [
                {
                    "activity_id": aid,
                    "computer_id": cid,
                    "at": now,
                    "event": "transition",
                    "from_state": None,
                    "to_state": state,
                    "actor": actor,
                    "reason": "created",
                }
                for aid, cid, state in created
            ],
        )

    # --- prerequisites --------------------------------------------------------------

    def prerequisite_met_thd(self, conn, wait_for_id: int | None, threshold: int | None) -> bool:
        """Whether ``wait_for`` is satisfied (no prerequisite counts as met)."""
        if wait_for_id is None:
            return True
        pre = self.get_thd(conn, wait_for_id)
        figure = states.waiting_figure(is_group=pre.is_group, state=pre.state, progress=pre.progress, counts=pre.counts)
        return figure >= (100 if threshold is None else threshold)

    # --- due work (the scheduler) ----------------------------------------------------
    #
    # Each query below reads one index range of ``activities`` and stops after
    # ``limit`` rows, so the scheduler's cost per tick never grows with the number
    # of activities: only with the rows that are in that state *and* due. The
    # ``*_query`` functions at the bottom of this module build them (a test checks
    # their plans on SQLite and PostgreSQL).

    def due_scheduled_server_thd(self, conn, now: dt.datetime, limit: int) -> list[Activity]:
        """``scheduled`` server activities whose ``deliver_after`` has come."""
        return [_row_to_activity(r) for r in conn.execute(due_scheduled_server_query(now, limit))]

    def due_held_thd(self, conn, now: dt.datetime, limit: int) -> list[Activity]:
        """``blocked``/``held`` activities (approved, waiting for their time) whose time has come."""
        return [_row_to_activity(r) for r in conn.execute(due_held_query(now, limit))]

    def expired_thd(self, conn, state: str, now: dt.datetime, limit: int) -> list[Activity]:
        """Undelivered activities in ``state`` whose ``deliver_before`` has passed."""
        return [_row_to_activity(r) for r in conn.execute(expired_query(state, now, limit))]

    def no_answer_due_thd(self, conn, now: dt.datetime, limit: int) -> list[Activity]:
        """``in-progress`` client activities whose answer deadline has passed."""
        return [_row_to_activity(r) for r in conn.execute(no_answer_due_query(now, limit))]

    def provisional_cancels_due_thd(self, conn, now: dt.datetime, limit: int) -> list[Activity]:
        """Provisionally ``canceled`` client activities whose answer deadline has passed."""
        return [_row_to_activity(r) for r in conn.execute(provisional_cancels_due_query(now, limit))]

    def waiting_decided_thd(self, conn, now: dt.datetime, limit: int) -> list[tuple[Activity, "WaitDecision"]]:
        """``waiting`` activities that can go on (prerequisite met and time come) or
        never will (prerequisite hopeless), each with the decision.

        SQL preselects candidates (:func:`waiting_decided_query`); the decision is
        then made by :mod:`server.states` (the one definition of the rule), reading
        each prerequisite once per call.
        """
        rows = [_row_to_activity(r) for r in conn.execute(waiting_decided_query(now, limit))]
        prerequisites: dict[int, Activity | None] = {}
        out = []
        for w in rows:
            if w.wait_for_id is not None and w.wait_for_id not in prerequisites:
                try:
                    prerequisites[w.wait_for_id] = self.get_thd(conn, w.wait_for_id)
                except ActivityNotFound:
                    prerequisites[w.wait_for_id] = None
            pre = prerequisites.get(w.wait_for_id) if w.wait_for_id is not None else None
            out.append((w, decide_waiting(w, pre, now)))
        return out

    def finalize_provisional_cancel_thd(self, conn, activity_id: int, *, actor: str, reason: str,
                                        now: dt.datetime) -> Activity | None:
        """Make a provisional cancel final as it is (its state stays ``canceled``),
        with an event in the history. Compare-and-set on the provisional flag:
        returns None, changing nothing, when the agent's result (or another
        scheduler) resolved it first."""
        n = conn.execute(
            activities.update()
            .where(activities.c.id == activity_id, activities.c.state == states.CANCELED,
                   activities.c.cancel_provisional == sa.true())
            .values(cancel_provisional=False, answer_deadline=None, modified_at=now)
        ).rowcount
        if n != 1:
            return None
        a = self.get_thd(conn, activity_id)
        self.record_event_thd(conn, a, "cancel-final", actor=actor, reason=reason, now=now)
        return a

    # --- transitions ----------------------------------------------------------------

    def record_event_thd(self, conn, activity: Activity, event: str, *, actor: str, reason: str, now) -> None:
        """Append a notable event that is not a transition to the history."""
        conn.execute(
            activity_history.insert().values(
                activity_id=activity.id,
                computer_id=activity.computer_id,
                at=now,
                event=event,
                from_state=activity.state,
                to_state=None,
                actor=actor,
                reason=reason,
            )
        )

    def transition(self, activity_id: int, expected: str, to: str, **kwargs):
        return self.db.run(self.transition_thd, activity_id, expected, to, **kwargs)

    def transition_thd(
        self,
        conn: sa.Connection,
        activity_id: int,
        expected: str,
        to: str,
        *,
        actor: str,
        reason: str,
        now: dt.datetime,
        blocked_reason: str | None = None,
        values: dict[str, Any] | None = None,
        _resolving_cancel: bool = False,
    ) -> Activity:
        """Move one activity from ``expected`` to ``to``: compare-and-set, history
        row, and the group parent's counters and state, in the caller's transaction.

        Raises :class:`server.states.TransitionError` when the table forbids the
        move and :class:`LostRace` when the activity is no longer in ``expected``.
        """
        current = self.get_thd(conn, activity_id)
        if current.is_group:
            raise states.TransitionError(
                f"activity {activity_id} is a group; its state follows its children", activity_id=activity_id,
                current=current.state,
            )
        if not _resolving_cancel:
            states.check(current.kind, expected, to, activity_id=activity_id)
        if to == states.BLOCKED and blocked_reason not in states.BLOCKED_REASONS:
            raise ValueError("a move to blocked needs a blocked reason")
        update = {**target_values(to, current.kind, now, blocked_reason), **(values or {})}
        cond = [activities.c.id == activity_id, activities.c.state == expected]
        if _resolving_cancel:
            cond.append(activities.c.cancel_provisional == sa.true())
        result = conn.execute(activities.update().where(*cond).values(**update))
        if result.rowcount != 1:
            now_state = conn.execute(sa.select(activities.c.state).where(activities.c.id == activity_id)).scalar()
            raise LostRace(
                f"activity {activity_id} is {now_state}, not {expected}; nothing changed",
                activity_id=activity_id,
                current=now_state,
            )
        self._transition_history_thd(conn, [(activity_id, current.computer_id, expected)], to,
                                     actor=actor, reason=reason, now=now)
        self._apply_parent_deltas_thd(conn, parent_deltas([(current.parent_id, expected)], to), now=now,
                                      reason=f"a child went from {expected} to {to}")
        return replace(current, **update)

    def _transition_history_thd(self, conn, moved: Sequence[tuple[int, int | None, str]], to: str, *,
                                actor: str, reason: str, now: dt.datetime) -> None:
        """One history insert for ``(activity_id, computer_id, from_state)`` moves to ``to``."""
        if not moved:
            return
        conn.execute(activity_history.insert(), [
            {"activity_id": aid, "computer_id": cid, "at": now, "event": "transition",
             "from_state": old, "to_state": to, "actor": actor, "reason": reason}
            for aid, cid, old in moved
        ])

    def transition_many_thd(
        self,
        conn: sa.Connection,
        moves: Sequence[tuple[Activity, dict[str, Any]]],
        to: str,
        *,
        actor: str,
        reason: str,
        now: dt.datetime,
    ) -> None:
        """Move several activities, each from the state it was read in, to ``to``,
        in a constant number of statements whatever their number: one
        ``executemany`` compare-and-set per activity kind, one history insert, and
        the parents' counters (see :meth:`_apply_parent_deltas_thd`). Each row gets
        :func:`target_values` for its kind under its own ``values``.

        The caller must have read the activities in this transaction with a row
        lock (``FOR UPDATE``; SQLite serialises writers), so every compare-and-set
        holds; if one does not, :class:`LostRace` is raised and the caller's
        transaction must roll back. Every ``values`` dict carries the same keys.
        ``to`` must not be ``blocked`` (which needs a reason per activity).
        """
        if not moves:
            return
        if to == states.BLOCKED:
            raise ValueError("transition_many_thd cannot move to blocked")
        keys = sorted(moves[0][1])
        for a, values in moves:
            if a.is_group:
                raise states.TransitionError(f"activity {a.id} is a group; its state follows its children",
                                             activity_id=a.id, current=a.state)
            states.check(a.kind, a.state, to, activity_id=a.id)
            if sorted(values) != keys:
                raise ValueError("every move must set the same columns")
        # One executemany per kind (the fixed columns depend on it), each in id
        # order: one lock order for every writer.
        by_kind: dict[str, list[tuple[Activity, dict[str, Any]]]] = {}
        for move in sorted(moves, key=lambda m: m[0].id):
            by_kind.setdefault(move[0].kind, []).append(move)
        moved = 0
        for kind, kind_moves in by_kind.items():
            fixed = {k: v for k, v in target_values(to, kind, now).items() if k not in keys}
            stmt = (
                activities.update()
                .where(activities.c.id == sa.bindparam("m_id"), activities.c.state == sa.bindparam("m_expected"))
                .values(**fixed, **{k: sa.bindparam(f"m_v_{k}") for k in keys})
            )
            params = [{"m_id": a.id, "m_expected": a.state, **{f"m_v_{k}": v[k] for k in keys}} for a, v in kind_moves]
            moved += conn.execute(stmt, params).rowcount
        if moved != len(moves):
            raise LostRace(f"{len(moves) - moved} of {len(moves)} activities changed meanwhile; nothing changed")
        self._transition_history_thd(conn, [(a.id, a.computer_id, a.state) for a, _ in moves], to,
                                     actor=actor, reason=reason, now=now)
        self._apply_parent_deltas_thd(conn, parent_deltas([(a.parent_id, a.state) for a, _ in moves], to), now=now,
                                      reason=f"children went to {to}")

    def _apply_parent_deltas_thd(self, conn, deltas: dict[int, dict[str, int]], *, now, reason: str) -> None:
        """Add per-state deltas to group parents' counters and derive their states.

        The counter ``UPDATE`` (``n = n + delta``) takes each parent's row lock on
        PostgreSQL, in id order, so concurrent children of one parent serialise
        there and the counts never drift. A constant number of statements: the
        counters, one read of them, and the changed parents' states and history.
        """
        if not deltas:
            return
        ids = sorted(deltas)
        counter_cols = {s: activities.c[c] for s, c in COUNTER_COLUMNS.items()}
        conn.execute(
            activities.update()
            .where(activities.c.id == sa.bindparam("p_id"))
            .values({col: col + sa.bindparam(f"p_d_{s}") for s, col in counter_cols.items()}
                    | {activities.c.modified_at: now}),
            [{"p_id": pid, **{f"p_d_{s}": deltas[pid].get(s, 0) for s in counter_cols}} for pid in ids],
        )
        rows = conn.execute(
            sa.select(activities.c.id, activities.c.state, *counter_cols.values()).where(activities.c.id.in_(ids))
        ).all()
        changes = []
        for row in rows:
            counts = {s: row._mapping[col.name] for s, col in counter_cols.items()}
            new_state = states.group_state(counts)
            if new_state != row.state:
                changes.append((row.id, row.state, new_state))
        if not changes:
            return
        params = []
        for pid, old, new in changes:
            blocked_reason = None
            if new == states.BLOCKED:
                # All children blocked: the parent shows the reason they share, if any.
                reasons = conn.execute(
                    sa.select(activities.c.blocked_reason)
                    .where(activities.c.parent_id == pid, activities.c.state == states.BLOCKED)
                    .distinct()
                ).scalars().all()
                blocked_reason = reasons[0] if len(reasons) == 1 else states.APPROVAL
            params.append({"g_id": pid, "g_state": new, "g_reason": blocked_reason,
                           "g_completed": now if new in states.FINAL_STATES else None})
        conn.execute(
            activities.update()
            .where(activities.c.id == sa.bindparam("g_id"))
            .values(state=sa.bindparam("g_state"), blocked_reason=sa.bindparam("g_reason"),
                    completed_at=sa.bindparam("g_completed")),
            params,
        )
        conn.execute(
            activity_history.insert(),
            [{"activity_id": pid, "computer_id": None, "at": now, "event": "transition", "from_state": old,
              "to_state": new, "actor": "group", "reason": reason} for pid, old, new in changes],
        )

    # --- administrator verbs -------------------------------------------------------

    def transition_bulk_thd(
        self,
        conn: sa.Connection,
        activity_ids: Sequence[int],
        expected: str,
        to: str,
        *,
        kind: str,
        actor: str,
        reason: str,
        now: dt.datetime,
        values: dict[str, Any] | None = None,
    ) -> list[Activity]:
        """Move many activities of ``kind`` from ``expected`` to ``to`` with the same
        ``values`` (over :func:`target_values`): one compare-and-set ``UPDATE ...
        RETURNING`` and one bulk history insert, in the caller's transaction (the
        job-handler's claims and outcomes, many at a time).

        Unlike :meth:`transition_many_thd` the rows need not be locked beforehand
        and losing is normal: RETURNING says which moved.

        Only single activities without a parent are moved (group bookkeeping
        needs :meth:`transition_thd`); any other id, and any activity no longer in
        ``expected``, is skipped. Returns the activities moved, as they are now.
        """
        states.check(kind, expected, to)
        if to == states.BLOCKED:
            raise ValueError("use transition_thd for a move to blocked")
        ids = sorted(set(activity_ids))
        if not ids:
            return []
        update = {**target_values(to, kind, now), **(values or {})}
        rows = conn.execute(
            activities.update()
            .where(activities.c.id.in_(ids), activities.c.state == expected, activities.c.kind == kind,
                   activities.c.is_group == sa.false(), activities.c.parent_id.is_(None))
            .values(**update)
            .returning(*activities.c)
        ).all()
        moved = sorted((_row_to_activity(r) for r in rows), key=lambda a: a.id)
        self._transition_history_thd(conn, [(a.id, a.computer_id, expected) for a in moved], to,
                                     actor=actor, reason=reason, now=now)
        return moved

    def children_thd(self, conn, parent_id: int) -> list[Activity]:
        rows = conn.execute(sa.select(activities).where(activities.c.parent_id == parent_id).order_by(activities.c.id))
        return [_row_to_activity(r) for r in rows]

    def apply_verb(self, activity_id: int, verb: str, *, actor: str, now: dt.datetime, reason: str = ""):
        return self.db.run(self.apply_verb_thd, activity_id, verb, actor=actor, now=now, reason=reason)

    def apply_verb_thd(self, conn, activity_id: int, verb: str, *, actor: str, now: dt.datetime, reason: str = "") -> Activity:
        """``approve``, ``pause``, ``resume`` or ``cancel`` one activity; on a group
        parent, each child the verb can apply to. Raises TransitionError (nothing
        changed) when it applies to nothing."""
        target = self.get_thd(conn, activity_id)
        method = {
            "approve": self._approve_thd,
            "pause": self._pause_thd,
            "resume": self._resume_thd,
            "cancel": self._cancel_thd,
        }[verb]
        why = reason or f"{verb} by {actor}"
        if not target.is_group:
            method(conn, target, actor=actor, reason=why, now=now)
            return self.get_thd(conn, activity_id)
        applied = 0
        for child in self.children_thd(conn, activity_id):
            try:
                method(conn, child, actor=actor, reason=why, now=now)
                applied += 1
            except states.TransitionError:
                continue
        if not applied:
            raise states.TransitionError(
                f"activity {activity_id} is a group none of whose children can be {verb}d",
                activity_id=activity_id,
                current=target.state,
            )
        return self.get_thd(conn, activity_id)

    def _approve_thd(self, conn, a: Activity, *, actor, reason, now) -> None:
        states.check_verb("approve", a.state, a.blocked_reason, activity_id=a.id)
        p = states.approval_placement(
            prerequisite_met=self.prerequisite_met_thd(conn, a.wait_for_id, a.wait_for_threshold),
            time_has_come=a.deliver_after is None or a.deliver_after <= now,
        )
        if p.state == states.BLOCKED:
            # blocked/approval → blocked/held is a change of reason, not of state.
            n = conn.execute(
                activities.update()
                .where(activities.c.id == a.id, activities.c.state == states.BLOCKED,
                       activities.c.blocked_reason == states.APPROVAL)
                .values(blocked_reason=p.blocked_reason, approved_at=now, modified_at=now)
            ).rowcount
            if n != 1:
                raise LostRace(f"activity {a.id} changed meanwhile; nothing changed", activity_id=a.id, current=a.state)
            self.record_event_thd(conn, a, "approved", actor=actor, reason=f"{reason}; held until {a.deliver_after.isoformat()}", now=now)
            return
        self.transition_thd(conn, a.id, a.state, p.state, actor=actor, reason=reason, now=now,
                            blocked_reason=p.blocked_reason, values={"approved_at": now})

    def _pause_thd(self, conn, a: Activity, *, actor, reason, now) -> None:
        states.check_verb("pause", a.state, a.blocked_reason, activity_id=a.id)
        self.transition_thd(conn, a.id, states.QUEUED, states.BLOCKED, actor=actor, reason=reason, now=now,
                            blocked_reason=states.PAUSED)

    def _resume_thd(self, conn, a: Activity, *, actor, reason, now) -> None:
        states.check_verb("resume", a.state, a.blocked_reason, activity_id=a.id)
        self.transition_thd(conn, a.id, states.BLOCKED, states.QUEUED, actor=actor, reason=reason, now=now)

    def _cancel_thd(self, conn, a: Activity, *, actor, reason, now) -> None:
        if a.state in states.FINAL_STATES:
            raise states.TransitionError(f"activity {a.id} is {a.state} and final; it cannot be canceled",
                                         activity_id=a.id, current=a.state)
        values: dict[str, Any] = {"result_code": codes.CANCELED, "result_text": f"Canceled: {reason}."}
        if a.state == states.IN_PROGRESS and a.kind == states.CLIENT:
            # The agent may still report: the cancel stays provisional until then
            # (the answer deadline is kept, so a silent agent still ends it).
            values["cancel_provisional"] = True
            values["answer_deadline"] = a.answer_deadline
        for listener in self.cancel_listeners:
            listener(conn, a, now)
        self.transition_thd(conn, a.id, a.state, states.CANCELED, actor=actor, reason=reason, now=now, values=values)

    # --- agent results --------------------------------------------------------------

    def apply_result_thd(
        self,
        conn,
        *,
        computer_id: int,
        operation_id: int,
        status: int,
        result_code: int | None,
        result_text: str | None,
        now: dt.datetime,
        actor: str,
    ) -> tuple[str, Activity | None]:
        """Apply an agent's ``operation-result``. Returns (what happened, activity):

        - ``"applied"``: in-progress → succeeded/failed;
        - ``"resolved-cancel"``: a provisional cancel became final (kept canceled on
          a result saying it was stopped, else replaced by the reported result);
        - ``"late"``: the activity was already final; recorded as an event only;
        - ``"not-yours"``: no such activity for this computer; nothing changed (the
          caller logs it as a security event).

        A result racing another change of the same activity (an administrator's
        cancel, the scheduler's no-answer or the end of a provisional cancel) loses
        its compare-and-set without writing anything; it is then applied once more
        to what the activity has become, so the outcome is decided exactly once.
        """
        try:
            return self._apply_result_once_thd(conn, computer_id, operation_id, status, result_code, result_text,
                                               now, actor)
        except LostRace:
            # Nothing was written (the compare-and-set comes first); the row moved
            # meanwhile, and a second look sees its committed state.
            return self._apply_result_once_thd(conn, computer_id, operation_id, status, result_code, result_text,
                                               now, actor)

    def _apply_result_once_thd(self, conn, computer_id, operation_id, status, result_code, result_text, now,
                               actor) -> tuple[str, Activity | None]:
        row = conn.execute(sa.select(activities).where(activities.c.id == operation_id)).first()
        if row is None or row.computer_id != computer_id or row.kind != states.CLIENT:
            return "not-yours", None
        a = _row_to_activity(row)
        values = {"result_code": result_code, "result_text": result_text or "", "progress": 100}
        if a.state == states.IN_PROGRESS:
            to = states.result_state(status)
            return "applied", self.transition_thd(
                conn, a.id, states.IN_PROGRESS, to, actor=actor, reason="result from the agent", now=now, values=values
            )
        if a.state == states.CANCELED and a.cancel_provisional:
            to = states.resolve_provisional_cancel(status, result_code)
            values["cancel_provisional"] = False
            if to == states.CANCELED:
                n = conn.execute(
                    activities.update()
                    .where(activities.c.id == a.id, activities.c.state == states.CANCELED,
                           activities.c.cancel_provisional == sa.true())
                    .values(**values, modified_at=now, answer_deadline=None)
                ).rowcount
                if n != 1:  # resolved meanwhile (e.g. the no-answer deadline): this result is late
                    raise LostRace(f"activity {a.id} was resolved meanwhile", activity_id=a.id, current=a.state)
                self.record_event_thd(conn, a, "cancel-confirmed", actor=actor,
                                      reason="the agent reports the work stopped because of the cancel", now=now)
                return "resolved-cancel", self.get_thd(conn, a.id)
            return "resolved-cancel", self.transition_thd(
                conn, a.id, states.CANCELED, to, actor=actor, now=now, values=values,
                reason="the agent finished the work before the cancel reached it",
                _resolving_cancel=True,
            )
        what = "succeeded" if status == codes.SUCCEEDED else "failed"
        self.record_event_thd(
            conn, a, "late-result", actor=actor, now=now,
            reason=f"a result ({what}, code {result_code}) arrived while the activity was {a.state}; state unchanged",
        )
        return "late", a


# --- the scheduler's due-time queries ---------------------------------------------------


@dataclass(frozen=True)
class WaitDecision:
    """What to do with a ``waiting`` activity: ``"go"`` (prerequisite met and time
    come), ``"hopeless"`` (prerequisite can no longer reach the threshold; ``text``
    names it) or ``"wait"``."""

    action: str
    text: str = ""


def decide_waiting(w: Activity, pre: Activity | None, now: dt.datetime) -> WaitDecision:
    """The waiting rule of ``spec/activities.md`` for one activity and its prerequisite.

    Only succeeded work counts (:func:`server.states.waiting_figure`). A
    prerequisite canceled *provisionally* (its agent may still report success) is
    not hopeless yet: the decision waits for its resolution.
    """
    threshold = 100 if w.wait_for_threshold is None else w.wait_for_threshold
    time_has_come = w.deliver_after is None or w.deliver_after <= now
    if pre is None:
        # No prerequisite (or it was purged): nothing to wait for but the time.
        return WaitDecision("go" if time_has_come else "wait")
    figure = states.waiting_figure(is_group=pre.is_group, state=pre.state, progress=pre.progress, counts=pre.counts)
    if figure >= threshold:
        return WaitDecision("go" if time_has_come else "wait")
    if pre.cancel_provisional:
        return WaitDecision("wait")
    if states.waiting_is_hopeless(is_group=pre.is_group, state=pre.state, counts=pre.counts, threshold=threshold):
        if pre.is_group:
            total = pre.children_count
            lost = pre.counts.get(states.FAILED, 0) + pre.counts.get(states.CANCELED, 0)
            why = (f"group activity {pre.id}, which this activity waits for, can no longer reach {threshold}% "
                   f"succeeded ({lost} of its {total} children failed or were canceled)")
        else:
            why = f"activity {pre.id}, which this activity waits for, ended {pre.state}"
        return WaitDecision("hopeless", why)
    return WaitDecision("wait")


def _single() -> sa.ColumnElement[bool]:
    # Group parents follow their children; the scheduler moves children only.
    return activities.c.is_group == sa.false()


def _due_query(state: str, due: sa.Column, now: dt.datetime, limit: int,
               *also: sa.ColumnElement[bool]) -> sa.Select:
    """Single activities in ``state`` whose ``due`` time has come (and ``also``),
    earliest first, at most ``limit``: one ordered range of the (state, due) index."""
    return (
        sa.select(activities)
        .where(activities.c.state == state, due <= now, *also, _single())
        .order_by(due)
        .limit(limit)
    )


def due_scheduled_server_query(now: dt.datetime, limit: int) -> sa.Select:
    """Index (state, deliver_after): the range ``scheduled`` with ``deliver_after <=
    now``, read in that order and cut at ``limit``. Overdue *client* scheduled rows
    (delivered by their computer's next exchange) sit in the same range and are
    skipped; there are only as many as computers that have not called in since
    their time, and they leave by delivery or expiry."""
    return _due_query(states.SCHEDULED, activities.c.deliver_after, now, limit,
                      activities.c.kind == states.SERVER)


def due_held_query(now: dt.datetime, limit: int) -> sa.Select:
    """Index (state, deliver_after): the range ``blocked`` with ``deliver_after <=
    now``. Blocked rows awaiting approval or resume with a past time are in the
    same range and skipped; they leave by the administrator or by expiry."""
    return _due_query(states.BLOCKED, activities.c.deliver_after, now, limit,
                      activities.c.blocked_reason == states.HELD)


EXPIRING_STATES = (states.QUEUED, states.SCHEDULED, states.WAITING, states.BLOCKED)


def expired_query(state: str, now: dt.datetime, limit: int) -> sa.Select:
    """Index (state, deliver_before): the range ``state`` with ``deliver_before <=
    now`` (one query per undelivered state, so each is a single ordered range).
    Every row read is expired except group parents (at most one per two children)."""
    if state not in EXPIRING_STATES:
        raise ValueError(f"{state} activities do not expire")
    return _due_query(state, activities.c.deliver_before, now, limit)


def no_answer_due_query(now: dt.datetime, limit: int) -> sa.Select:
    """Index (state, answer_deadline): the range ``in-progress`` with ``answer_deadline
    <= now``. Only delivered client activities get an answer deadline, so every row
    read is one to end."""
    return _due_query(states.IN_PROGRESS, activities.c.answer_deadline, now, limit,
                      activities.c.kind == states.CLIENT)


def provisional_cancels_due_query(now: dt.datetime, limit: int) -> sa.Select:
    """Index (state, answer_deadline): the range ``canceled`` with ``answer_deadline
    <= now``. A final transition clears the deadline, so only provisional cancels
    keep one: every row read is one to finalise."""
    return _due_query(states.CANCELED, activities.c.answer_deadline, now, limit,
                      activities.c.cancel_provisional == sa.true())


def waiting_decided_query(now: dt.datetime, limit: int) -> sa.Select:
    """``waiting`` rows (index (state, deliver_after), state part) joined to their
    prerequisite by primary key, keeping those whose prerequisite is met and whose
    time has come, or whose prerequisite is hopeless; cut at ``limit``.

    It reads the waiting rows and nothing else: never more than the activities
    that are waiting, each of which leaves by going on, by a hopeless prerequisite,
    or by expiry (every activity gets a ``deliver_before``). The conditions mirror
    :func:`server.states.waiting_figure` and :func:`server.states.waiting_is_hopeless`
    in integer arithmetic (``floor(100*a/b) >= t`` is ``100*a >= t*b`` for whole
    ``t``); :func:`decide_waiting` confirms each candidate.
    """
    w = activities
    p = activities.alias("prerequisite")
    t = sa.func.coalesce(w.c.wait_for_threshold, 100)
    total = p.c.children_count
    lost = p.c.n_failed + p.c.n_canceled
    met = sa.or_(
        p.c.id.is_(None),
        t <= 0,
        sa.and_(p.c.is_group == sa.true(), total > 0, 100 * p.c.n_succeeded >= t * total),
        sa.and_(p.c.is_group == sa.false(),
                sa.or_(p.c.state == states.SUCCEEDED,
                       sa.and_(p.c.state == states.IN_PROGRESS, p.c.progress >= t))),
    )
    time_has_come = sa.or_(w.c.deliver_after.is_(None), w.c.deliver_after <= now)
    hopeless = sa.and_(
        p.c.id.is_not(None),
        t > 0,
        p.c.cancel_provisional == sa.false(),
        sa.or_(
            sa.and_(p.c.is_group == sa.true(), sa.or_(total == 0, 100 * (total - lost) < t * total)),
            sa.and_(p.c.is_group == sa.false(), p.c.state.in_([states.FAILED, states.CANCELED])),
        ),
    )
    return (
        sa.select(w)
        .select_from(w.outerjoin(p, p.c.id == w.c.wait_for_id))
        .where(w.c.state == states.WAITING, w.c.is_group == sa.false(), sa.or_(sa.and_(met, time_has_come), hopeless))
        .limit(limit)
    )
