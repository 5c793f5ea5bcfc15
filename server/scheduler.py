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


@dataclass
class _Batch:
    """One transaction's outcome: rows read, rows moved per report field, server
    activities queued."""

    read: int = 0
    moved: dict[str, int] = field(default_factory=dict)
    server_queued: int = 0

    def add(self, other: "_Batch") -> None:
        self.read += other.read
        self.server_queued += other.server_queued
        for k, v in other.moved.items():
            self.moved[k] = self.moved.get(k, 0) + v


class Scheduler:
    """The rules above, one transaction per rule and batch.

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

    async def tick(self) -> TickReport:
        """Apply every rule once at the reactor's current time."""
        now = self.now()
        report = TickReport()
        server_queued = 0
        rules: list[tuple[str, Callable]] = [
            ("expiry", self._expire_thd),
            ("waiting", self._waiting_thd),
            ("held", self._release_held_thd),
            ("scheduled", self._queue_scheduled_server_thd),
            ("no-answer", self._no_answer_thd),
            ("provisional-cancel", self._finalize_cancels_thd),
        ]
        for name, rule in rules:
            try:
                total = await self._drain(rule, now)
            except Exception as e:  # a database error: this rule retries next tick
                log.failure("scheduler rule {rule} failed", rule=name)
                report.errors.append(f"{name}: {e}")
                continue
            for field_name, n in total.moved.items():
                setattr(report, field_name, getattr(report, field_name) + n)
            server_queued += total.server_queued
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

    async def _drain(self, rule: Callable, now: dt.datetime) -> _Batch:
        """Run ``rule`` in batches until one comes back short (or ``max_batches``)."""
        total = _Batch()
        for _ in range(self.max_batches):
            batch: _Batch = await self.db.run(rule, now)
            total.add(batch)
            if batch.read < self.batch_size or not any(batch.moved.values()):
                # Short batch: nothing more is due. A full batch that moved
                # nothing is made of rows another process took meanwhile: they
                # are gone by the next tick, no need to read them again now.
                break
        return total

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

    # --- the rules (each runs in one transaction) ------------------------------------

    def _move_thd(self, conn, rows: list[Activity], to: str, now: dt.datetime, counted_as: str,
                  why: Callable[[Activity], tuple[str, dict[str, Any]]]) -> _Batch:
        """Move each row from the state it was read in to ``to``; skip the ones that
        changed meanwhile (their compare-and-set writes nothing)."""
        acts = self.db.activities
        batch = _Batch(read=len(rows), moved={counted_as: 0})
        for a in rows:
            reason, values = why(a)
            try:
                acts.transition_thd(conn, a.id, a.state, to, actor=ACTOR, reason=reason, now=now, values=values)
            except states.TransitionError:  # includes LostRace
                continue
            batch.moved[counted_as] += 1
            if to == states.QUEUED and a.kind == states.SERVER:
                batch.server_queued += 1
        return batch

    def _expire_thd(self, conn, now: dt.datetime) -> _Batch:
        acts = self.db.activities
        total = _Batch()
        # One indexed range per undelivered state; the batch limit is shared.
        for state in EXPIRING_STATES:
            rows = acts.expired_thd(conn, state, now, self.batch_size - total.read)
            total.add(self._move_thd(conn, rows, states.CANCELED, now, "expired", _expiry_reason))
            if total.read >= self.batch_size:
                break
        return total

    def _waiting_thd(self, conn, now: dt.datetime) -> _Batch:
        decided = self.db.activities.waiting_decided_thd(conn, now, self.batch_size)
        texts = {w.id: d.text for w, d in decided}
        ready = [w for w, d in decided if d.action == "go"]
        hopeless = [w for w, d in decided if d.action == "hopeless"]

        def why_go(a: Activity):
            if a.wait_for_id is None:
                return "its time has come", {}
            return f"activity {a.wait_for_id}, which it waits for, reached the threshold, and its time has come", {}

        def why_hopeless(a: Activity):
            # No result code: none of the spec's codes says "prerequisite failed"
            # (``canceled`` means an administrator's cancel); the text names it.
            return texts[a.id], {"result_code": None, "result_text": f"Canceled: {texts[a.id]}."}

        batch = _Batch(read=len(decided))
        batch.add(self._move_thd(conn, hopeless, states.CANCELED, now, "hopeless", why_hopeless))
        batch.add(self._move_thd(conn, ready, states.QUEUED, now, "waits_met", why_go))
        batch.read = len(decided)
        return batch

    def _release_held_thd(self, conn, now: dt.datetime) -> _Batch:
        rows = self.db.activities.due_held_thd(conn, now, self.batch_size)
        return self._move_thd(conn, rows, states.QUEUED, now, "held_released",
                              lambda a: (f"approved and its time ({_iso(a.deliver_after)}) has come", {}))

    def _queue_scheduled_server_thd(self, conn, now: dt.datetime) -> _Batch:
        rows = self.db.activities.due_scheduled_server_thd(conn, now, self.batch_size)
        return self._move_thd(conn, rows, states.QUEUED, now, "scheduled_queued",
                              lambda a: (f"its time ({_iso(a.deliver_after)}) has come", {}))

    def _no_answer_thd(self, conn, now: dt.datetime) -> _Batch:
        rows = self.db.activities.no_answer_due_thd(conn, now, self.batch_size)

        def why(a: Activity):
            text = f"no answer from the agent by {_iso(a.answer_deadline)}"
            return text, {"result_code": codes.NO_ANSWER,
                          "result_text": f"No answer: the agent did not report a result by {_iso(a.answer_deadline)}."}

        return self._move_thd(conn, rows, states.FAILED, now, "no_answer", why)

    def _finalize_cancels_thd(self, conn, now: dt.datetime) -> _Batch:
        acts = self.db.activities
        rows = acts.provisional_cancels_due_thd(conn, now, self.batch_size)
        batch = _Batch(read=len(rows), moved={"cancels_final": 0})
        for a in rows:
            done = acts.finalize_provisional_cancel_thd(
                conn, a.id, actor=ACTOR, now=now,
                reason=f"no answer from the agent by {_iso(a.answer_deadline)}; the cancel is final",
            )
            if done is not None:
                batch.moved["cancels_final"] += 1
        return batch


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat() if t is not None else "(none)"


def _expiry_reason(a: Activity) -> tuple[str, dict[str, Any]]:
    text = f"not delivered before {_iso(a.deliver_before)}"
    return f"expired: {text}", {"result_code": codes.EXPIRED, "result_text": f"Expired: {text}."}


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

    The tick interval comes from ``context.config.scheduler_interval`` when the
    configuration has that setting, else one second.
    """
    interval = getattr(context.config, "scheduler_interval", None) or DEFAULT_INTERVAL
    return SchedulerService(Scheduler(context), interval=float(interval))
