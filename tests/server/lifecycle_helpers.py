"""Shared set-up of the lifecycle and scheduler tests: a real database, a Clock,
the scheduler, and small verbs for what other parts of the server do (the
exchange delivering, an agent answering, an administrator's verbs)."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet import defer
from twisted.internet.task import Clock

from api_support import fired
from protocol import codes
from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.activities import Activity, ActivitiesConnector, NewActivity
from server.db.computers import NewComputer
from server.db.tables import activities
from server.scheduler import Scheduler

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)


class RecordingQueue:
    """A queue double that records, at each ``publish_pending`` call, which server
    activities are ``queued`` and not yet published (what a real queue would
    publish), and marks them published, as the real one does."""

    def __init__(self, db):
        self.db = db
        self.published: list[list[int]] = []

    def publish_pending(self):
        def thd(conn):
            ids = conn.execute(
                sa.select(activities.c.id).where(
                    activities.c.state == "queued", activities.c.kind == "server", activities.c.published_at.is_(None)
                ).order_by(activities.c.id)
            ).scalars().all()
            if ids:
                conn.execute(activities.update().where(activities.c.id.in_(ids)).values(published_at=NOW))
            return list(ids)

        return self.db.run(thd).addCallback(self.published.append)


class FixedDelays(random.Random):
    """An rng whose ``uniform`` gives the delays a test chooses, in order."""

    def __init__(self, delays):
        super().__init__(0)
        self._delays = list(delays)

    def uniform(self, a, b):
        return self._delays.pop(0)


class World:
    """One server's lifecycle under test: ``db`` (real), ``clock``, ``scheduler``."""

    def __init__(self, db, *, queue: bool | Any = True, lease_sweep=None, batch_size: int = 500,
                 max_batches: int = 20):
        self.db = attach_components(db)
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        if queue is True:
            self.queue = RecordingQueue(self.db)
        elif queue is False:
            self.queue = None
        else:
            self.queue = queue(self)
        self.context = ServerContext(reactor=self.clock, db=self.db, config=ServerConfig(), plugins=None,
                                     queue=self.queue)
        self.scheduler = Scheduler(self.context, batch_size=batch_size, max_batches=max_batches,
                                   lease_sweep=lease_sweep or (lambda context, now: 0))
        self._n = 0

    @property
    def acts(self) -> ActivitiesConnector:
        return self.db.activities

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), tz=UTC)

    def advance(self, delta: dt.timedelta):
        self.clock.advance(delta.total_seconds())

    def tick(self):
        return fired(defer.Deferred.fromCoroutine(self.scheduler.tick()))

    def computers(self, n: int) -> list[int]:
        ids = []
        for _ in range(n):
            self._n += 1
            c = fired(self.db.computers.create(
                NewComputer(title=f"c{self._n}", hostname=f"h{self._n}", account_name="standalone",
                            secure_id=f"secure-{self._n}".encode(), accepted=True), self.now()))
            ids.append(c.id)
        return ids

    def client(self, computer_ids=None, **kw) -> Activity:
        if computer_ids is None:
            computer_ids = self.computers(1)
        return fired(self.acts.create(NewActivity(kind="client", type="execute-script", parameters={"code": "true"},
                                                  creator="admin", computer_ids=computer_ids, **kw), self.now()))

    def server(self, **kw) -> Activity:
        return fired(self.acts.create(NewActivity(kind="server", type="count-computers", parameters={},
                                                  creator="admin", **kw), self.now()))

    def get(self, activity_id: int) -> Activity:
        return fired(self.acts.get(activity_id))

    def history(self, activity_id: int):
        return fired(self.acts.history(activity_id))

    def children(self, parent_id: int) -> list[Activity]:
        return self.db.run_sync(self.acts.children_thd, parent_id)

    def move(self, activity_id: int, from_state: str, to_state: str, *, actor="exchange", **kw) -> Activity:
        return fired(self.acts.transition(activity_id, from_state, to_state, actor=actor, reason="test set-up",
                                          now=self.now(), **kw))

    def deliver(self, activity_id: int, *, answer_within: dt.timedelta = 24 * HOUR, from_state="queued") -> Activity:
        """What the exchange does: hand it to the agent with an answer deadline."""
        return self.move(activity_id, from_state, "in-progress",
                         values={"answer_deadline": self.now() + answer_within})

    def verb(self, activity_id: int, verb: str) -> Activity:
        return fired(self.acts.apply_verb(activity_id, verb, actor="admin", now=self.now()))

    def result(self, activity: Activity, *, status=codes.SUCCEEDED, code=None, text="done"):
        return self.db.run_sync(self.acts.apply_result_thd, computer_id=activity.computer_id,
                                operation_id=activity.id, status=status, result_code=code, result_text=text,
                                now=self.now(), actor="agent")

    def set_progress(self, activity_id: int, progress: int) -> None:
        """What the exchange does on a progress report from the agent."""
        self.db.run_sync(lambda conn: conn.execute(
            activities.update().where(activities.c.id == activity_id).values(progress=progress)))

    def scheduler_entries(self, activity_id: int):
        return [h for h in self.history(activity_id) if h.actor == "scheduler"]


# The lifecycle test modules import these two fixtures by name (pytest finds a
# fixture among a module's attributes), so each file need not declare them again.
@pytest.fixture
def world(server_db) -> World:
    """A World on each configured database (SQLite, and PostgreSQL when available)."""
    return World(server_db)


@pytest.fixture
def sqlite_world(sqlite_server_db) -> World:
    """A World on SQLite only, for what does not depend on the database."""
    return World(sqlite_server_db)
