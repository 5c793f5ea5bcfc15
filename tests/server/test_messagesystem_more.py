"""Message system: attachment downloads, the deliverable-work SQL against the
activities connector, and HTTP/1.1 behaviour over a real socket."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from protocol import bpickle, codes
from protocol import exchange as px
from protocol import messages as pm
from server import web
from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.activities import NewActivity
from server.db.exchangestate import prerequisite_met_sql
from server.db.tables import activities
from server.plugins import ActivityTypes

from messagesystem_client import fired
from test_messagesystem_exchange import Env

import sqlalchemy as sa


def _get(env, path: str, secure_id: bytes | None):
    headers = {b"X-Computer-ID": secure_id} if secure_id is not None else {}
    d = env.treq.get("http://server" + path, headers=headers)
    env.treq.flush()
    response = fired(d)
    return response.code, fired(response.content())


def _script_with_attachment(env, computer_id: int, name="data.txt", data=b"payload\x00bytes"):
    att = env.run(env.db.attachments.create_thd, name, data, "alice", env.now)
    params = env.types.validate("execute-script", {"code": "#!/bin/sh\ncat $LANDSCAPE_ATTACHMENTS/data.txt",
                                                   "username": "root", "attachments": {name: att.id}})
    new = NewActivity(kind="client", type="execute-script", parameters=params, creator="alice",
                      computer_ids=[computer_id], attachment_ids=[att.id])
    return env.run(env.db.activities.create_thd, new, env.now).id, att.id


def test_attachment_served_only_once_delivered_and_only_to_its_computer(server_db):
    env = Env(server_db)
    c, other = env.client(title="c"), env.client(title="o")
    c.register()
    other.register()
    a, att = _script_with_attachment(env, c.insecure_id)
    path = f"/attachment/{att}"
    assert _get(env, path, c.secure_id)[0] == 403  # not delivered yet
    c.exchange()
    (op,) = c.operations()
    assert op["attachments"] == {"data.txt": att}
    assert _get(env, path, c.secure_id) == (200, b"payload\x00bytes")
    assert _get(env, path, other.secure_id)[0] == 403
    assert _get(env, path, b"forged-id")[0] == 403
    assert _get(env, path, None)[0] == 403
    assert _get(env, "/attachment/999999", c.secure_id)[0] == 404
    assert _get(env, "/attachment/abc", c.secure_id)[0] == 404
    # Still served after the activity finished (the agent may fetch late).
    c.send(pm.operation_result(a, codes.SUCCEEDED))
    c.exchange()
    assert _get(env, path, c.secure_id)[0] == 200
    # A removed computer's id no longer works.
    env.run(env.db.computers.remove_thd, c.insecure_id, env.now)
    assert _get(env, path, c.secure_id)[0] == 403


@pytest.mark.parametrize("threshold", [0, 50, 100])
def test_prerequisite_sql_agrees_with_the_connector(server_db, threshold):
    """deliverable_sql's prerequisite test is states.waiting_figure in SQL: compare
    it with ActivitiesConnector.prerequisite_met_thd over singles and groups in
    every state and progress."""
    env = Env(server_db)
    c1, c2 = env.client(title="1"), env.client(title="2")
    c1.register()
    c2.register()
    acts = env.db.activities
    pres = []
    for state_path in ([], ["in-progress"], ["in-progress", "succeeded"], ["in-progress", "failed"], ["canceled"]):
        for progress in (0, 50, 100):
            a = env.script(c1.insecure_id)
            for to in state_path:
                cur = env.activity(a).state
                env.run(acts.transition_thd, a, cur, to, actor="t", reason="t", now=env.now)
            env.run(lambda conn: conn.execute(activities.update().where(activities.c.id == a).values(progress=progress)))
            pres.append(a)
    params = env.types.validate("execute-script", {"code": "#!/bin/sh\n:", "username": "root"})
    for outcomes in ([], ["succeeded"], ["succeeded", "succeeded"], ["failed"]):
        g = env.run(acts.create_thd, NewActivity(kind="client", type="execute-script", parameters=params,
                                                 creator="t", computer_ids=[c1.insecure_id, c2.insecure_id]), env.now)
        kids = env.run(acts.children_thd, g.id)
        for kid, outcome in zip(kids, outcomes):
            env.run(acts.transition_thd, kid.id, "queued", "in-progress", actor="t", reason="t", now=env.now)
            env.run(acts.transition_thd, kid.id, "in-progress", outcome, actor="t", reason="t", now=env.now)
        pres.append(g.id)

    def sql_met(conn, pre_id):
        probe = activities.alias("probe")
        q = sa.select(prerequisite_met_sql(probe)).select_from(probe).where(probe.c.id == waiter_ids[pre_id])
        return bool(conn.execute(q).scalar())

    waiter_ids = {}
    for pre in pres:
        w = env.script(c2.insecure_id, wait_for_id=pre, wait_for_threshold=threshold)
        waiter_ids[pre] = w
    results = set()
    for pre in pres:
        expected = env.run(acts.prerequisite_met_thd, pre, threshold)
        assert env.run(sql_met, pre) == expected, (pre, env.activity(pre))
        results.add(expected)
    assert results == {True, False} or threshold == 0


# --- real socket ---------------------------------------------------------------------------


@pytest.fixture
def socket_env(sqlite_url, make_server_db):
    from server.db.base import Database, ThreadPoolRunner, create_engine
    from server.db.tables import metadata
    from twisted.python.threadpool import ThreadPool

    engine = create_engine(sqlite_url)
    metadata.create_all(engine)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="ms-test-db")
    pool.start()
    db = attach_components(Database(engine, ThreadPoolRunner(reactor, pool)))
    context = ServerContext(reactor=reactor, db=db, config=ServerConfig(max_body_size=4096),
                            plugins=ActivityTypes.from_plugins(load_entry_points=False), server_uuid="sock-uuid")
    site = web.make_site(web.build_root(context), context.config.max_body_size)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield port.getHost().port
    fired_stop = port.stopListening()
    pool.stop()
    engine.dispose()
    return fired_stop


def _http(port: int, requests: list[bytes]) -> list[tuple[int, bytes, bytes]]:
    """Send requests on ONE keep-alive connection; return (status, interim, body) each.
    A request may be a tuple (headers, body): the body goes only after 100 Continue."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        for req in requests:
            interim = b""
            if isinstance(req, tuple):
                head, body = req
                s.sendall(head)
                interim = f.readline()
                f.readline()  # blank line after the interim response
                s.sendall(body)
            else:
                s.sendall(req)
            status = int(f.readline().split()[1])
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            out.append((status, interim, f.read(length)))
    return out


def _post(body: bytes, path=b"/message-system", extra=b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"X-Message-API: 3.2\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest_twisted.ensureDeferred
async def test_keep_alive_expect_continue_and_the_site_limit(socket_env):
    port = socket_env
    first = bpickle.dumps(px.ExchangeRequest(server_api=b"3.2", client_api=px.CLIENT_API, sequence=0,
                                             accepted_types_digest=px.accepted_types_digest([]), messages=[],
                                             next_expected_sequence=0).to_wire())
    reg = bpickle.dumps({"messages": [pm.register("standalone", "sock", "h")]})
    full = _post(reg)
    head, body = full.split(b"\r\n\r\n", 1)
    expect = (head.replace(b"Content-Length", b"Expect: 100-continue\r\nContent-Length") + b"\r\n\r\n", body)
    too_big = _post(b"x" * 5000)
    results = await threads.deferToThread(_http, port, [_post(first), expect, too_big])
    (s1, _, b1), (s2, interim, b2), (s3, _, b3) = results
    assert s1 == 200 and bpickle.loads(b1)["messages"][0]["types"] == ["register", "resynchronize"]
    assert interim.startswith(b"HTTP/1.1 100")
    assert s2 == 200 and bpickle.loads(b2)["messages"][0]["type"] == "set-id"
    assert s3 == 413
