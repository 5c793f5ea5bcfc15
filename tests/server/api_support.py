"""Shared helpers of the REST API tests: a real site on a real SQLite database,
driven through ``treq.testing.StubTreq`` with an injected ``Clock``."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
import sqlalchemy as sa
from treq.testing import StubTreq
from twisted.internet.task import Clock

from server import web
from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.computers import NewComputer
from server.db.tables import activities, activity_attachments, activity_history, attachments, computer_tags, computers
from server.hookspecs import ActivityType, hookimpl
from server.plugins import ActivityTypes

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
_serial = itertools.count()


def fired(d):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


async def _report(job):
    return "done"


class ServerTypes:
    """A server (job) type for tests: ``report`` with an optional ``title``."""

    @hookimpl
    def ridgeline_activity_types(self):
        return [ActivityType(name="report", kind="server", run=_report, parameters_schema={
            "type": "object", "additionalProperties": False, "properties": {"title": {"type": "string"}}})]


def activity_types():
    from plugins import execute_script_type

    return ActivityTypes.from_plugins([execute_script_type, ServerTypes()], load_entry_points=False)


class Api:
    """The API of one test: context, key, and request helpers returning (code, json)."""

    def __init__(self, db, config: ServerConfig | None = None, queue=None):
        self.db = attach_components(db)
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.config = config or ServerConfig()
        self.context = ServerContext(reactor=self.clock, db=self.db, config=self.config, plugins=activity_types(),
                                     queue=queue)
        self.treq = StubTreq(web.build_root(self.context))
        self.key = fired(self.db.apikeys.create("admin", NOW))[1]

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), tz=dt.timezone.utc)

    def request(self, method: str, path: str, *, body=None, raw: bytes | None = None, key: str | None = "default",
                headers: dict | None = None):
        hdrs = dict(headers or {})
        if key == "default":
            key = self.key
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        url = path if path.startswith("http") else "http://ridgeline.test/api/v1" + path
        d = self.treq.request(method, url, data=data, headers=hdrs)
        self.treq.flush()
        response = fired(d)
        content = fired(response.content())
        self.last = response
        return response.code, (json.loads(content) if content else None)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # --- seeding ---------------------------------------------------------------------

    def computers(self, n: int, *, accepted: bool = True, tags=()) -> list[int]:
        news = [NewComputer(title=f"c{i}", hostname=f"h{i}", account_name="standalone",
                            secure_id=f"secure-{next(_serial)}".encode(), accepted=accepted, tags=tags)
                for i in range(n)]
        return self.db.run_sync(self.db.computers.create_many_thd, news, self.now)

    def script(self, computer_ids=None, **extra) -> dict:
        body = {"type": "execute-script", "parameters": {"code": "#!/bin/sh\necho hi\n", "username": "root"}}
        if computer_ids is not None:
            body["computer_ids"] = computer_ids
        body.update(extra)
        return body

    def counts(self) -> dict[str, int]:
        """Rows per table: what "nothing changed" is checked against."""
        def thd(conn):
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in (activities, activity_history, activity_attachments, attachments, computers,
                              computer_tags)}
        return self.db.run_sync(thd)

    def snapshot(self):
        """Every activity row and computer row: a stronger "nothing changed"."""
        def thd(conn):
            return (conn.execute(sa.select(activities).order_by(activities.c.id)).all(),
                    conn.execute(sa.select(computers).order_by(computers.c.id)).all(),
                    conn.execute(sa.select(activity_history).order_by(activity_history.c.id)).all())
        return self.db.run_sync(thd)


@pytest.fixture
def api(sqlite_server_db):
    return Api(sqlite_server_db)
