"""The scheduler: the server's clock-driven side of the activity life cycle.

Every tick (one second by default) it applies, in this order, the time rules of
``spec/activities.md``:

1. **expiry** — ``queued``/``scheduled``/``waiting``/``blocked`` activities whose
   ``deliver_before`` has passed end ``canceled`` with result code ``expired``
   (first, so nothing that expired is moved on in the same tick);
2. **hopeless waits** — ``waiting`` activities whose prerequisite can no longer
   reach the threshold end ``canceled`` with a text naming the prerequisite;
3. **waits met** — ``waiting`` activities whose prerequisite is met and whose time
   has come go ``queued``;
4. **held** — ``blocked``/``held`` activities (approved, waiting for their time) go
   ``queued`` when it comes;
5. **scheduled server activities** go ``queued`` when their time comes (a client
   ``scheduled`` activity is delivered by its computer's next exchange instead);
6. **no answer** — an ``in-progress`` client activity whose answer deadline passed
   ends ``failed`` with ``no-answer``; a provisional ``canceled`` one becomes final
   as it is;
7. **expired job leases** — the queue's sweep, when the queue provides one.

When a server activity became ``queued`` the queue is asked to publish.

Cost: every rule is its own query on one index of ``activities`` over due times
(see the ``*_query`` functions in :mod:`server.db.activities`, each saying why it
is bounded); a rule handles at most ``batch_size`` rows per transaction and at most
``max_batches`` transactions per tick, so a tick never scans all activities and a
backlog drains over the following ticks. Every change goes through
``ActivitiesConnector.transition_thd`` (compare-and-set, history row with actor
``scheduler`` and the reason, group parent bookkeeping); a row that changed
meanwhile (the exchange, an administrator, another server's scheduler) loses its
compare-and-set, changes nothing and is skipped.
"""

from __future__ import annotations

import datetime as dt
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from protocol import codes
from server import states
from server.context import ServerContext
from server.db.activities import EXPIRING_STATES, Activity

ACTOR = "scheduler"
DEFAULT_INTERVAL = 1.0
DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_BATCHES = 20

log = Logger(namespace="ridgeline.scheduler")


@dataclass
class TickReport:
    """How many activities each rule moved in one tick (for logs and tests)."""

    expired: int = 0
    hopeless: int = 0
    waits_met: int = 0
    held_released: int = 0
    scheduled_queued: int = 0
    no_answer: int = 0
    cancels_final: int = 0
    leases_swept: int = 0
    published: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return (self.expired + self.hopeless + self.waits_met + self.held_released + self.scheduled_queued
                + self.no_answer + self.cancels_final)


@dataclass(frozen=True)
class Move:
    """One change the scheduler decided on: ``activity`` (as read) goes ``to``
    (None: a provisional cancel becomes final, its state unchanged), with the
    history ``reason`` and column ``values``; ``counted_as`` names the
    :class:`TickReport` field it counts in."""

    activity: Activity
    to: str | None
    reason: str
    counted_as: str
    values: dict[str, Any] = field(default_factory=dict)


class Scheduler:
    """The rules above.

    Each rule reads its due rows in one short transaction (a bounded, indexed
    query), then applies each change in a transaction of its own: a change locks
    the activity's row and, for a group child, its parent's, so holding one
    change's locks at a time keeps the scheduler from blocking exchanges for a
    whole batch and from deadlocking with them on parents. The compare-and-set
    makes a stale read harmless.

    ``lease_sweep``: ``f(context, now) -> int | Deferred[int]`` ending expired job
    leases, or None to look for the queue's own (see :func:`find_lease_sweep`).
    """

    def __init__(self, context: ServerContext, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batches: int = DEFAULT_MAX_BATCHES, lease_sweep: Callable | None = None):
        if batch_size < 1 or max_batches < 1:
            raise ValueError("batch_size and max_batches must be positive")
        self.context = context
        self.db = context.db
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.lease_sweep = lease_sweep if lease_sweep is not None else find_lease_sweep(context)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.context.reactor.seconds(), tz=dt.timezone.utc)

    @property
    def rules(self) -> list[tuple[str, Callable]]:
        """(name, selector) in the order a tick applies them. A selector
        ``f(conn, now, limit) -> (rows read, [Move])`` reads one bounded batch."""
        return [
            ("expiry", self.select_expired_thd),
            ("waiting", self.select_waiting_thd),
            ("held", self.select_held_thd),
            ("scheduled", self.select_scheduled_server_thd),
            ("no-answer", self.select_no_answer_thd),
            ("provisional-cancel", self.select_provisional_cancels_thd),
        ]

    async def tick(self) -> TickReport:
        """Apply every rule once at the reactor's current time."""
        now = self.now()
        report = TickReport()
        server_queued = 0
        for name, select in self.rules:
            try:
                server_queued += await self._drain(name, select, now, report)
            except Exception as e:  # the read failed (database trouble): retried next tick
                log.failure("scheduler rule {rule} failed", rule=name)
                report.errors.append(f"{name}: {e}")
        if self.lease_sweep is not None:
            try:
                report.leases_swept = int(await defer.maybeDeferred(self.lease_sweep, self.context, now) or 0)
            except Exception as e:
                log.failure("the job lease sweep failed")
                report.errors.append(f"leases: {e}")
        if server_queued:
            report.published = await self._publish(report)
        if report.moved:
            log.debug("scheduler tick: {report}", report=report)
        return report

    async def _drain(self, name: str, select: Callable, now: dt.datetime, report: TickReport) -> int:
        """Read and apply batches of one rule until a batch comes back short (or
        ``max_batches``); returns how many server activities became queued."""
        server_queued = 0
        for _ in range(self.max_batches):
            read, moves = await self.db.run(select, now, self.batch_size)
            moved = 0
            for move in moves:
                try:
                    done = await self.db.run(self.apply_thd, move, now)
                except Exception as e:  # e.g. a deadlock victim: this one is retried next tick
                    log.failure("scheduler: {rule} of activity {id} failed", rule=name, id=move.activity.id)
                    report.errors.append(f"{name} of activity {move.activity.id}: {e}")
                    continue
                if not done:
                    continue
                moved += 1
                setattr(report, move.counted_as, getattr(report, move.counted_as) + 1)
                if move.to == states.QUEUED and move.activity.kind == states.SERVER:
                    server_queued += 1
            if read < self.batch_size or moved == 0:
                # Short batch: nothing more is due now. A full batch that moved
                # nothing is made of rows others took meanwhile: read again next tick.
                break
        return server_queued

    def apply_thd(self, conn, move: Move, now: dt.datetime) -> bool:
        """Apply one decided change; False (nothing written) when the activity
        changed since it was read."""
        acts = self.db.activities
        a = move.activity
        if move.to is None:
            return acts.finalize_provisional_cancel_thd(conn, a.id, actor=ACTOR, reason=move.reason,
                                                        now=now) is not None
        try:
            acts.transition_thd(conn, a.id, a.state, move.to, actor=ACTOR, reason=move.reason, now=now,
                                values=move.values)
        except states.TransitionError:  # includes LostRace: the compare-and-set wrote nothing
            return False
        return True

    async def _publish(self, report: TickReport) -> bool:
        queue = getattr(self.context, "queue", None)
        publish = getattr(queue, "publish_pending", None)
        if publish is None:
            # No queue in this process: the queue's own sweeper publishes what
            # is committed ``queued`` and unpublished.
            return False
        try:
            await defer.maybeDeferred(publish)
        except Exception as e:
            log.failure("publishing queued server activities failed; the unpublished sweep retries")
            report.errors.append(f"publish: {e}")
            return False
        return True

    # --- the selectors (each one bounded, indexed read) -----------------------------

    def select_expired_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        acts = self.db.activities
        rows: list[Activity] = []
        # One indexed range per undelivered state; the batch limit is shared.
        for state in EXPIRING_STATES:
            if len(rows) >= limit:
                break
            rows += acts.expired_thd(conn, state, now, limit - len(rows))
        moves = []
        for a in rows:
            text = f"not delivered before {_iso(a.deliver_before)}"
            moves.append(Move(a, states.CANCELED, f"expired: {text}", "expired",
                              {"result_code": codes.EXPIRED, "result_text": f"Expired: {text}."}))
        return len(rows), moves

    def select_waiting_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        decided = self.db.activities.waiting_decided_thd(conn, now, limit)
        moves = []
        for w, d in decided:
            if d.action == "hopeless":
                # No result code: none of the spec's codes says "prerequisite
                # failed" (``canceled`` is an administrator's cancel); the text
                # names the prerequisite.
                moves.append(Move(w, states.CANCELED, d.text, "hopeless",
                                  {"result_code": None, "result_text": f"Canceled: {d.text}."}))
            elif d.action == "go":
                reason = ("its time has come" if w.wait_for_id is None else
                          f"activity {w.wait_for_id}, which it waits for, reached the threshold, "
                          "and its time has come")
                moves.append(Move(w, states.QUEUED, reason, "waits_met"))
            else:  # the query and the state machine disagree: say so, change nothing
                log.warn("scheduler: waiting activity {id} was selected but is not decided", id=w.id)
        return len(decided), moves

    def select_held_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        rows = self.db.activities.due_held_thd(conn, now, limit)
        return len(rows), [Move(a, states.QUEUED, f"approved and its time ({_iso(a.deliver_after)}) has come",
                                "held_released") for a in rows]

    def select_scheduled_server_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        rows = self.db.activities.due_scheduled_server_thd(conn, now, limit)
        return len(rows), [Move(a, states.QUEUED, f"its time ({_iso(a.deliver_after)}) has come",
                                "scheduled_queued") for a in rows]

    def select_no_answer_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        rows = self.db.activities.no_answer_due_thd(conn, now, limit)
        moves = []
        for a in rows:
            deadline = _iso(a.answer_deadline)
            moves.append(Move(a, states.FAILED, f"no answer from the agent by {deadline}", "no_answer",
                              {"result_code": codes.NO_ANSWER,
                               "result_text": f"No answer: the agent did not report a result by {deadline}."}))
        return len(rows), moves

    def select_provisional_cancels_thd(self, conn, now: dt.datetime, limit: int) -> tuple[int, list[Move]]:
        rows = self.db.activities.provisional_cancels_due_thd(conn, now, limit)
        return len(rows), [Move(a, None, f"no answer from the agent by {_iso(a.answer_deadline)}; "
                                         "the cancel is final", "cancels_final") for a in rows]


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat() if t is not None else "(none)"


#: Where the queue/job-handler engineer's lease sweep may live, in order.
LEASE_SWEEP_LOCATIONS = (
    ("server.jobhandler", "sweep_expired_leases"),
    ("server.queue", "sweep_expired_leases"),
)


def find_lease_sweep(context: ServerContext) -> Callable | None:
    """The expired-lease sweep to call each tick, or None when none exists yet.

    Looks for ``context.queue.sweep_expired_leases(now)`` first, then a module
    function ``sweep_expired_leases(context, now)`` in :data:`LEASE_SWEEP_LOCATIONS`.
    Either returns (a Deferred of) the number of activities it ended.
    """
    queue = getattr(context, "queue", None)
    method = getattr(queue, "sweep_expired_leases", None)
    if method is not None:
        return lambda _context, now: method(now)
    for module_name, name in LEASE_SWEEP_LOCATIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue
            raise
        fn = getattr(module, name, None)
        if fn is not None:
            return fn
    return None


class SchedulerService(service.Service):
    """Runs :meth:`Scheduler.tick` every ``interval`` seconds on the context's
    reactor. Ticks never overlap (the loop waits for one to finish); a failing tick
    is logged and the next one runs as usual."""

    name = "scheduler"

    def __init__(self, scheduler: Scheduler, interval: float = DEFAULT_INTERVAL):
        if interval <= 0:
            raise ValueError("the scheduler interval must be positive")
        self.scheduler = scheduler
        self.interval = interval
        self._loop: task.LoopingCall | None = None
        self._current: defer.Deferred | None = None
        self.last_report: TickReport | None = None

    def _run_tick(self) -> defer.Deferred:
        d = defer.Deferred.fromCoroutine(self.scheduler.tick())

        def done(report):
            self.last_report = report
            self._current = None

        def failed(f):
            self._current = None
            log.failure("scheduler tick failed", f)

        d.addCallbacks(done, failed)
        self._current = d
        return d

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._run_tick)
        self._loop.clock = self.scheduler.context.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("scheduler loop stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        # Let a tick under way finish its transaction before the pool stops.
        if self._current is not None:
            waiting = defer.Deferred()
            self._current.addBoth(lambda r: (waiting.callback(None), r)[1])
            return waiting
        return None


def make_service(context: ServerContext) -> service.IService:
    """The scheduler service of a server process (started by ``server.service``).

    The tick interval is the ``scheduler_interval`` setting.
    """
    return SchedulerService(Scheduler(context), interval=float(context.config.scheduler_interval))
