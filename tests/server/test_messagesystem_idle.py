"""The idle exchange on SQLite runs in the calling (reactor) thread without ever
waiting: a busy database sends it to the runner, and WAL checkpoints go to the
runner too."""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet import defer

from protocol import bpickle
from server.db import attach_components, exchangestate
from server.db.base import Database, create_engine, inline_runner
from server.messagesystem.exchange import MessageSystem, parse_request

from test_messagesystem_exchange import Env


class HeldRunner:
    """A runner that keeps each call until the test runs it (a thread pool that
    has not got to it yet)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, fn, *args, **kwargs):
        d = defer.Deferred()
        self.calls.append((fn, args, kwargs, d))
        return d

    def run_all(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args, kwargs, d in calls:
            d.callback(fn(*args, **kwargs))


def _idle_request(client):
    return parse_request(bpickle.dumps(client.payload()), secure_id=client.secure_id, token=client.token,
                         message_api=b"3.3", max_size=1 << 20)


def _token_hash(env, client) -> str:
    return env.row(client.insecure_id).exchange_token_hash


@pytest.fixture
def senv(make_server_db, sqlite_url):
    env = Env(make_server_db(sqlite_url))
    env.path = sqlite_url.removeprefix("sqlite:///")
    return env


def test_idle_exchange_needs_no_runner(senv):
    c = senv.client()
    c.register()
    c.exchange()
    runner = senv.db.runner = HeldRunner()
    before = _token_hash(senv, c)
    d = MessageSystem(senv.context).exchange(_idle_request(c))
    reply = d.result  # fired at once: no thread hop
    assert runner.calls == []
    assert reply["messages"] == [] and reply["next-exchange-token"]
    assert _token_hash(senv, c) != before


def test_a_busy_database_sends_the_idle_exchange_to_the_runner(senv):
    c = senv.client()
    c.register()
    c.exchange()
    runner = senv.db.runner = HeldRunner()
    before = _token_hash(senv, c)
    other = sqlite3.connect(senv.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer (a job-handler, the pool) holds the database
    try:
        d = MessageSystem(senv.context).exchange(_idle_request(c))
        assert not d.called and len(runner.calls) == 1  # waiting for the pool, not in the reactor
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert _token_hash(senv, c) == before  # nothing changed by the refused attempt
    runner.run_all()
    reply = d.result
    assert reply["messages"] == [] and reply["next-exchange-token"]
    assert _token_hash(senv, c) != before


def test_a_request_that_is_not_idle_takes_the_full_exchange(senv):
    c = senv.client()
    c.register()
    c.exchange()
    senv.script(c.insecure_id)
    runner = senv.db.runner = HeldRunner()
    d = MessageSystem(senv.context).exchange(_idle_request(c))
    assert not d.called and len(runner.calls) == 1
    runner.run_all()
    assert [m["type"] for m in d.result["messages"]] == ["execute-script"]


def test_idle_commits_in_the_reactor_thread_leave_wal_checkpoints_to_the_runner(senv, monkeypatch):
    monkeypatch.setattr(exchangestate, "INLINE_CHECKPOINT_EVERY", 3)
    c = senv.client()
    c.register()
    c.exchange()
    runner = senv.db.runner = HeldRunner()
    ms = MessageSystem(senv.context)
    for _ in range(3):
        reply = ms.exchange(_idle_request(c)).result
        c.handle(reply, c.payload())
    assert [fn.__name__ for fn, *_ in runner.calls] == ["_checkpoint_sync"]
    # The reactor thread's own connection never waits and never checkpoints.
    cursor = senv.db.exchange._inline_raw.cursor()
    assert cursor.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    cursor.close()
    runner.run_all()
    probe = sqlite3.connect(senv.path)
    try:
        busy, frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, done) == (0, frames)
    finally:
        probe.close()
    # The next checkpoint comes after as many commits again.
    for _ in range(2):
        c.handle(ms.exchange(_idle_request(c)).result, c.payload())
    assert runner.calls == []
    c.handle(ms.exchange(_idle_request(c)).result, c.payload())
    assert len(runner.calls) == 1


def test_in_memory_sqlite_never_runs_inline():
    db = attach_components(Database(create_engine("sqlite://"), inline_runner))
    try:
        assert db.exchange.inline_idle is False
    finally:
        db.close()


def test_a_prepared_statement_missing_a_parameter_is_refused_not_bound_to_null(senv):
    import sqlalchemy as sa

    raw = senv.db.engine.raw_connection()
    try:
        conn = exchangestate._RawConn(senv.db.engine.dialect, raw)
        with pytest.raises(sa.exc.InvalidRequestError, match="exchange_token_hash"):
            exchangestate._SAVE_IDLE.run(conn, {"cid": 1, "last_seen": None})
    finally:
        raw.rollback()
        raw.close()
