"""The message-system exchange with a scripted landscape-client broker (on
protocol/) against the real resources, over StubTreq, on a real database."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.web.resource import Resource

from protocol import bpickle, codes
from protocol import exchange as px
from protocol import messages as pm
from server import states
from server.config import ServerConfig
from server.context import ServerContext
from server.db import attach_components
from server.db.activities import NewActivity
from server.db.computers import hash_secret
from server.db.tables import activities, activity_history, computers, outbox
from server.messagesystem import make_resources
from server.plugins import ActivityTypes

from messagesystem_client import ScriptedClient, fired, landscape_config_register, post

T0 = 1_700_000_000


class Env:
    """A server (resources mounted as server.web does), its clock and database."""

    def __init__(self, db, **config):
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = attach_components(db)
        self.types = ActivityTypes.from_plugins(load_entry_points=False)
        self.logged: list[dict] = []
        self.context = ServerContext(reactor=self.clock, db=self.db, config=ServerConfig(**config),
                                     plugins=self.types, server_uuid="test-server-uuid",
                                     log=Logger(namespace="test.ms", observer=self.logged.append))
        root = Resource()
        for name, resource in make_resources(self.context).items():
            root.putChild(name, resource)
        self.root = root
        self.treq = StubTreq(root)

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), tz=dt.timezone.utc)

    def client(self, **kw) -> ScriptedClient:
        return ScriptedClient(self.treq, **kw)

    def run(self, fn, *a, **kw):
        return self.db.run_sync(fn, *a, **kw)

    def computer_id(self, client: ScriptedClient) -> int:
        return client.insecure_id

    def script(self, computer_id: int, code="#!/bin/sh\necho hi\n", **kw) -> int:
        params = self.types.validate("execute-script", {"code": code, "username": "root", **kw.pop("params", {})})
        new = NewActivity(kind="client", type="execute-script", parameters=params, creator="alice",
                          computer_ids=[computer_id], **kw)
        return self.run(self.db.activities.create_thd, new, self.now).id

    def activity(self, activity_id: int):
        return self.run(self.db.activities.get_thd, activity_id)

    def counts(self) -> dict[str, int]:
        def thd(conn):
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in (computers, activities, activity_history, outbox)}
        return self.run(thd)

    def row(self, computer_id: int):
        return self.run(lambda conn: conn.execute(sa.select(computers).where(computers.c.id == computer_id)).one())

    def warnings(self, text: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.logged
                if e.get("log_level") in (LogLevel.warn, LogLevel.error) and text in formatEvent(e)]


@pytest.fixture
def env(server_db):
    return Env(server_db)


@pytest.fixture
def senv(sqlite_server_db):
    return Env(sqlite_server_db)


# --- registration ----------------------------------------------------------------------


def test_first_exchange_of_a_new_client_gets_register_accepted(senv):
    c = senv.client()
    reply = c.exchange()
    assert reply["server-api"] == px.SERVER_API and reply["server-uuid"] == b"test-server-uuid"
    assert reply["messages"] == [{"type": "accepted-types", "types": ["register", "resynchronize"]}]
    # No hash yet: the client must send its types with the register message.
    assert "client-accepted-types-hash" not in reply
    assert senv.counts()["computers"] == 0


def test_broker_registration_then_authenticated_exchanges(env):
    c = env.client(title="web1")
    c.register()
    assert [m["type"] for m in c.received] == ["accepted-types", "set-id", "accepted-types"]
    assert type(c.secure_id) is bytes and len(c.secure_id) >= 40
    assert c.accepted == sorted(["operation-result", "resynchronize"])
    row = env.row(c.insecure_id)
    assert row.status == "accepted" and row.title == "web1" and row.hostname == "host.example"
    assert row.vm_info == "kvm" and row.access_group == "lab"
    assert row.secure_id_hash == hash_secret(c.secure_id)  # only the hash is stored
    assert c.secure_id.decode() not in str(tuple(row))
    assert row.client_accepted_types == ";".join(c.client_types)
    tags = env.run(env.db.computers.get_thd, c.insecure_id).tags
    assert tags == ("prod", "web")
    # The client stops sending its types once the server echoed their hash.
    assert c.client_types_hash == px.accepted_types_digest(c.client_types)
    token1 = c.token
    assert type(token1) is bytes
    reply = c.exchange()
    assert "client-accepted-types" not in c.requests[-1]
    assert reply["messages"] == [] and reply["next-expected-sequence"] == c.sequence
    assert c.token != token1 and type(c.token) is bytes
    assert env.row(c.insecure_id).exchange_token_hash == hash_secret(c.token)
    # Everything the server sent was acknowledged and forgotten.
    assert env.counts()["outbox"] == 0


def test_landscape_config_bare_registration_then_broker(env):
    reply = landscape_config_register(env.treq)
    (set_id,) = reply["messages"]
    assert set_id["type"] == "set-id" and type(set_id["id"]) is bytes and type(set_id["insecure-id"]) is int
    assert reply["server-uuid"] == b"test-server-uuid" and reply["server-api"] == px.SERVER_API
    row = env.row(set_id["insecure-id"])
    assert (row.title, row.hostname, row.machine_id, row.access_group) == ("cfgbox", "cfg.example", "5923867a-0000",
                                                                          "mygroup")
    # The broker starts with the ids only: empty accepted types, no token, sequences 0.
    c = env.client(title="cfgbox")
    c.secure_id, c.insecure_id = set_id["id"], set_id["insecure-id"]
    reply = c.exchange()
    assert [m["type"] for m in reply["messages"]] == ["accepted-types"]
    assert c.accepted == ["operation-result", "resynchronize"]
    assert reply["client-accepted-types-hash"] == px.accepted_types_digest(c.client_types)
    c.exchange()
    assert len(c.received) == 1 and env.counts()["outbox"] == 0


def test_wrong_account_is_refused(env):
    c = env.client(account="other")
    c.exchange()
    c.exchange()
    assert c.received[-1] == {"type": "registration", "info": "unknown-account"}
    assert env.counts()["computers"] == 0
    reply = landscape_config_register(env.treq, account="other")
    assert reply["messages"] == [{"type": "registration", "info": "unknown-account"}]


@pytest.mark.parametrize("password, status", [("sekret", "accepted"), ("wrong", "pending"), (None, "pending")])
def test_registration_key(sqlite_server_db, password, status):
    e = Env(sqlite_server_db, registration_key="sekret")
    assert not e.warnings("no registration key")
    c = e.client(password=password)
    c.register()
    assert e.row(c.insecure_id).status == status


def test_refuse_pending(sqlite_server_db):
    e = Env(sqlite_server_db, registration_key="sekret", refuse_pending=True)
    c = e.client(password="nope")
    c.exchange()
    c.exchange()
    assert c.received[-1] == {"type": "registration", "info": "unknown-account"}
    assert e.counts()["computers"] == 0
    ok = e.client(password="sekret")
    ok.register()
    assert e.row(ok.insecure_id).status == "accepted"


def test_no_key_warns_at_start(senv):
    assert senv.warnings("no registration key")


def test_unknown_or_revoked_secure_id(env):
    c = env.client()
    c.secure_id, c.insecure_id = b"no-such-id", 99
    reply = c.exchange()
    assert reply["messages"] == [{"type": "unknown-id"}]
    assert "next-exchange-token" not in reply
    d = env.client()
    d.register()
    env.run(env.db.computers.remove_thd, d.insecure_id, env.now)
    d.exchange()
    assert d.received[-1] == {"type": "unknown-id", "clone-of": None} and d.secure_id is None


# --- tokens and clones -----------------------------------------------------------------


def test_missing_token_is_accepted_and_rotates(env):
    c = env.client()
    c.register()
    before = env.row(c.insecure_id).exchange_token_hash
    reply = c.exchange(token=None)
    assert reply["messages"] == [] and c.token is not None
    assert env.row(c.insecure_id).exchange_token_hash not in (before, None)


def test_clone_with_a_wrong_token(env):
    original = env.client(title="orig")
    original.register()
    a = env.script(original.insecure_id)
    clone = env.client(title="copy")
    clone.secure_id, clone.insecure_id = original.secure_id, original.insecure_id
    clone.accepted, clone.server_sequence = list(original.accepted), original.server_sequence
    clone.token = b"an-old-token"
    before = env.counts()
    reply = clone.exchange()
    assert reply["messages"] == [{"type": "unknown-id", "clone-of": "orig"}]
    assert env.counts() == before and env.activity(a).state == "queued"
    assert env.warnings("wrong exchange token")
    # The clone re-registers with clone_secure_id: a new computer linked to the original.
    clone.exchange()
    clone.exchange()
    assert clone.secure_id not in (None, original.secure_id)
    new = env.row(clone.insecure_id)
    assert new.clone_of_id == original.insecure_id and new.id != original.insecure_id
    # The original keeps its id and its activities.
    original.exchange()
    assert original.operations()[0]["operation-id"] == a
    assert env.activity(a).computer_id == original.insecure_id


# --- delivery, resend, result ------------------------------------------------------------


def test_script_delivery_lost_reply_resend_and_result(env):
    c = env.client()
    c.register()
    a = env.script(c.insecure_id, code="#!/bin/bash\necho hi\n", params={"time_limit": 60, "env": {"X": "1"}})
    c.exchange(lose_reply=True)
    act = env.activity(a)
    assert act.state == "in-progress" and act.delivered_at == env.now
    assert act.answer_deadline == env.now + dt.timedelta(seconds=env.context.config.no_answer_deadline + 60)
    # The reply was lost: the next exchange (no token, same count) gets it again.
    c.exchange()
    (op,) = c.operations()
    assert op["operation-id"] == a and op["interpreter"] == "/bin/bash" and op["code"] == "echo hi\n"
    assert op["username"] == "root" and op["time-limit"] == 60 and op["attachments"] == {}
    assert op["env"]["X"] == "1"
    assert op["env"]["LANDSCAPE_ACCOUNT"] == "standalone"
    assert op["env"]["LANDSCAPE_COMPUTER_ID"] == str(c.insecure_id)
    assert op["env"]["LANDSCAPE_ACTIVITY_ID"] == str(a)
    assert op["env"]["LANDSCAPE_ACTIVITY_CREATOR_ID"] == "alice"
    assert op["env"]["LANDSCAPE_ACTIVITY_CREATION_TIME"] == "2023-11-14T22:13:20Z"
    # Once acknowledged it is not sent again.
    c.exchange()
    assert len(c.operations()) == 1 and env.counts()["outbox"] == 0
    c.send(pm.operation_result(a, codes.SUCCEEDED, result_text="hi\n"))
    c.exchange()
    act = env.activity(a)
    assert act.state == "succeeded" and act.result_text == "hi\n"
    # A resend of the same result (its ack was lost) is dropped by sequence.
    c.sequence -= 1
    c.pending_offset -= 1
    c.exchange()
    history = env.run(env.db.activities.history_thd, a)
    assert [h.event for h in history].count("late-result") == 0


def test_a_strangers_operation_id_changes_nothing(env):
    owner, other = env.client(title="owner"), env.client(title="other")
    owner.register()
    other.register()
    a = env.script(owner.insecure_id)
    owner.exchange()
    before = env.counts()
    other.send(pm.operation_result(a, codes.FAILED, result_text="pwned"))
    other.exchange()
    assert env.activity(a).state == "in-progress"
    after = env.counts()
    assert after["activity_history"] == before["activity_history"]
    assert env.warnings("not one of its activities")


def test_pending_computer_gets_nothing(sqlite_server_db):
    e = Env(sqlite_server_db, registration_key="k")
    c = e.client(password="bad")
    c.register()
    # The REST API refuses to create for pending computers; even if one existed,
    # the exchange must not deliver it.
    a = e.script(c.insecure_id)
    c.exchange()
    assert c.operations() == [] and e.activity(a).state == "queued"
    e.run(e.db.computers.accept_thd, c.insecure_id, e.now)
    c.exchange()
    assert [m["operation-id"] for m in c.operations()] == [a]


def test_types_the_agent_does_not_list_stay_queued(env):
    c = env.client(handles=())
    c.register()
    a = env.script(c.insecure_id)
    c.exchange()
    assert c.operations() == [] and env.activity(a).state == "queued"


def test_scheduled_waiting_and_expired(env):
    c = env.client()
    c.register()
    later = env.script(c.insecure_id, deliver_after=env.now + dt.timedelta(seconds=100))
    first = env.script(c.insecure_id)
    waits = env.script(c.insecure_id, wait_for_id=first)
    expired = env.script(c.insecure_id, deliver_before=env.now + dt.timedelta(seconds=50))
    assert [env.activity(i).state for i in (later, waits)] == ["scheduled", "waiting"]
    env.clock.advance(60)
    c.exchange()
    assert [m["operation-id"] for m in c.operations()] == [first]
    # Expired work is left to the scheduler (it cancels it with code expired).
    assert env.activity(expired).state == "queued"
    c.send(pm.operation_result(first, codes.SUCCEEDED))
    c.exchange()  # the result arrives; the prerequisite is met, but the time not yet
    env.clock.advance(50)
    c.exchange()
    assert sorted(m["operation-id"] for m in c.operations()) == sorted([first, later, waits])


# --- sequences --------------------------------------------------------------------------


def test_client_sequence_gap_takes_nothing(env):
    c = env.client()
    c.register()
    a = env.script(c.insecure_id)
    c.exchange()
    expected = env.row(c.insecure_id).client_sequence
    c.send(pm.operation_result(a, codes.SUCCEEDED))
    c.sequence += 5  # the client skipped numbers: a gap
    reply = c.exchange()
    assert reply["next-expected-sequence"] == expected
    assert env.activity(a).state == "in-progress"
    # The client rewinds (client_ack) and resends: now taken.
    c.exchange()
    assert env.activity(a).state == "succeeded"


@pytest.mark.parametrize("shift", [-3, +40])
def test_server_sequence_ancient_or_too_high_resynchronizes(env, shift):
    c = env.client()
    c.register()
    a = env.script(c.insecure_id)
    c.exchange(lose_reply=True)  # the script is kept, unacknowledged
    c.server_sequence = max(0, c.server_sequence + shift)
    start = c.server_sequence
    reply = c.exchange()
    types = [m["type"] for m in reply["messages"]]
    assert types == ["execute-script", "resynchronize"]
    assert reply["messages"][0]["operation-id"] == a
    resync_id = reply["messages"][1]["operation-id"]
    assert resync_id > a  # from the activities' id sequence: never reused
    assert env.row(c.insecure_id).server_sequence == start + 2
    # The client answers the resynchronize; the server's records follow.
    c.exchange()
    assert env.activity(resync_id).state == "succeeded"
    assert env.counts()["outbox"] == 0
    # And the numbering holds afterwards.
    b = env.script(c.insecure_id)
    c.exchange()
    assert c.operations()[-1]["operation-id"] == b and env.row(c.insecure_id).server_sequence == c.server_sequence


def test_client_rewind_resends_and_server_drops_the_overlap(env):
    c = env.client()
    c.register()
    a, b = env.script(c.insecure_id), env.script(c.insecure_id)
    c.exchange()
    c.send(pm.operation_result(a, codes.SUCCEEDED))
    c.exchange(lose_reply=True)  # server took the result, the client did not hear
    assert env.activity(a).state == "succeeded"
    c.send(pm.operation_result(b, codes.FAILED, result_code=103))
    c.exchange()  # resends a's result (dropped) and b's
    assert env.activity(b).state == "failed" and env.activity(b).result_code == 103
    history = env.run(env.db.activities.history_thd, a)
    assert not [h for h in history if h.event == "late-result"]


# --- bad input ---------------------------------------------------------------------------


def _bad(env, body: bytes, headers=None):
    return post(env.treq, "http://server/message-system", body, headers or {})


@pytest.mark.parametrize("body, reason", [
    (b"", "bpickle"),
    (b"i1;garbage", "bpickle"),
    (b"du8:messagesl", "bpickle"),
    (bpickle.dumps([1, 2]), "payload"),
    (bpickle.dumps({"sequence": 0}), "messages"),
    (bpickle.dumps({"messages": [{"type": "operation-result", "operation-id": "7", "status": 6}],
                    "sequence": 0, "next-expected-sequence": 0}), "operation-id"),
    (bpickle.dumps({"messages": [{"type": "register", "account_name": "standalone"}]}), "computer_title"),
])
def test_malformed_bodies_are_400_and_change_nothing(env, body, reason):
    c = env.client()
    c.register()
    before = (env.counts(), tuple(env.row(c.insecure_id)))
    code, text = _bad(env, body, {b"X-Computer-ID": c.secure_id, b"X-Exchange-Token": c.token})
    assert code == 400 and reason in text.decode()
    assert (env.counts(), tuple(env.row(c.insecure_id))) == before
    assert env.warnings("exchange refused (400)")


def test_oversized_body_is_413(sqlite_server_db):
    e = Env(sqlite_server_db, max_body_size=1000)
    c = e.client()
    c.register()
    before = (e.counts(), tuple(e.row(c.insecure_id)))
    body = bpickle.dumps({"messages": [{"type": "x", "pad": "a" * 2000}], "sequence": 0})
    code, _ = _bad(e, body, {b"X-Computer-ID": c.secure_id})
    assert code == 413
    assert (e.counts(), tuple(e.row(c.insecure_id))) == before


# --- capabilities and cancel -------------------------------------------------------------


def test_cancel_activity_only_to_agents_listing_it(env):
    ridgeline = env.client(title="rl", handles=("execute-script", "cancel-activity"))
    plain = env.client(title="plain")
    ridgeline.register()
    plain.register()
    a, b = env.script(ridgeline.insecure_id), env.script(plain.insecure_id)
    ridgeline.exchange()
    plain.exchange()
    for i in (a, b):
        env.run(env.db.activities.apply_verb_thd, i, "cancel", actor="alice", now=env.now)
    ridgeline.exchange()
    plain.exchange()
    assert ridgeline.operations("cancel-activity") == [{"type": "cancel-activity", "target-operation-id": a}]
    assert plain.operations("cancel-activity") == []
    assert env.activity(b).state == "canceled" and env.activity(b).cancel_provisional
    ridgeline.send(pm.operation_result(a, codes.FAILED, result_code=codes.CANCELED))
    ridgeline.exchange()
    assert env.activity(a).state == "canceled" and not env.activity(a).cancel_provisional


def test_set_intervals_when_configured_never_below_10(sqlite_server_db):
    # Without configured intervals none is sent (test_broker_registration_... lists every message).
    e = Env(sqlite_server_db, exchange_interval=5, ping_interval=30)
    c = e.client()
    c.register()
    wanted = pm.validate_server_message(pm.set_intervals(exchange=10, ping=30))
    assert [m for m in c.received if m["type"] == "set-intervals"] == [wanted]


# --- ping -----------------------------------------------------------------------------------


def _ping(env, body: bytes):
    code, content = post(env.treq, "http://server/ping", body,
                         {b"Content-Type": b"application/x-www-form-urlencoded"})
    return code, content


def test_ping(env):
    c = env.client()
    c.register()
    # set-id and accepted-types are kept until the next exchange acknowledges them.
    assert _ping(env, b"insecure_id=%d" % c.insecure_id) == (200, bpickle.dumps({"messages": True}))
    c.exchange()
    assert _ping(env, b"insecure_id=%d" % c.insecure_id) == (200, bpickle.dumps({"messages": False}))
    a = env.script(c.insecure_id)
    assert _ping(env, b"insecure_id=%d" % c.insecure_id) == (200, b"du8:messagesb1;")
    c.exchange()
    c.exchange()
    assert env.activity(a).state == "in-progress"
    assert _ping(env, b"insecure_id=%d" % c.insecure_id)[1] == bpickle.dumps({"messages": False})
    env.script(c.insecure_id, deliver_after=env.now + dt.timedelta(seconds=10))
    assert bpickle.loads(_ping(env, b"insecure_id=%d" % c.insecure_id)[1]) == {"messages": False}
    env.clock.advance(10)
    assert bpickle.loads(_ping(env, b"insecure_id=%d" % c.insecure_id)[1]) == {"messages": True}
    assert bpickle.loads(_ping(env, b"insecure_id=424242")[1]) == {"messages": False}


@pytest.mark.parametrize("body", [b"", b"insecure_id=abc", b"insecure_id=1&insecure_id=2", b"other=1"])
def test_bad_ping_is_400(senv, body):
    assert _ping(senv, body)[0] == 400


def test_idle_path_still_catches_a_clone_and_stale_counts(env):
    """Idle-shaped requests take the short path; any doubt falls back to the full one."""
    c = env.client()
    c.register()
    c.exchange()
    clone = env.client()
    for name in ("secure_id", "insecure_id", "accepted", "server_sequence", "sequence", "client_types_hash"):
        setattr(clone, name, getattr(c, name))
    clone.token = b"stale"
    assert clone.payload().get("client-accepted-types") is None  # idle-shaped
    before = tuple(env.row(c.insecure_id))
    assert clone.exchange()["messages"] == [{"type": "unknown-id", "clone-of": "box"}]
    assert tuple(env.row(c.insecure_id)) == before
    # An idle-shaped request whose count is behind gets the kept messages again.
    a = env.script(c.insecure_id)
    c.exchange(lose_reply=True)
    c.exchange()
    assert [m["operation-id"] for m in c.operations()] == [a]
    seen = env.row(c.insecure_id).last_seen
    env.clock.advance(5)
    c.exchange()
    assert env.row(c.insecure_id).last_seen == seen + dt.timedelta(seconds=5)
