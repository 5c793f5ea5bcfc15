"""Message system, breaker review: client values that fit bpickle but not the
database (64-bit ids and sequences, 32-bit result codes, NUL characters, long
tags) are refused with 400 or stored cleaned, never a 500, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import pytest

from protocol import bpickle, codes
from protocol import messages as pm

from messagesystem_client import post
from test_messagesystem_exchange import Env


def _send_raw(env, client, messages=(), **payload_keys):
    """One exchange carrying ``messages`` (bypassing the client's queue) and any
    payload key overridden; returns (HTTP status, body)."""
    payload = client.payload()
    payload["messages"] = list(messages)
    payload.update(payload_keys)
    return post(env.treq, client.url, bpickle.dumps(payload), client.headers(client.token))


def _result(op_id, **kw):
    return {**pm.operation_result(op_id, codes.SUCCEEDED, result_text="ok"), "api": b"3.3", "timestamp": 1, **kw}


@pytest.mark.parametrize("op_id", [2**63, 10**30, -(2**63) - 1])
def test_an_operation_id_beyond_64_bits_is_400_and_changes_nothing(server_db, op_id):
    env = Env(server_db)
    c = env.client()
    c.register()
    before = env.counts()
    code, body = _send_raw(env, c, [_result(op_id)])
    assert code == 400, body
    assert b"operation-id" in body
    assert env.counts() == before


@pytest.mark.parametrize("key", ["sequence", "next-expected-sequence", "total-messages"])
def test_a_payload_number_beyond_64_bits_is_400(server_db, key):
    env = Env(server_db)
    c = env.client()
    c.register()
    before = env.counts()
    code, body = _send_raw(env, c, **{key: 2**63})
    assert code == 400, body
    assert key.encode() in body
    assert env.counts() == before
    # The computer still exchanges normally afterwards.
    assert c.exchange() is not None


def test_a_result_code_beyond_32_bits_is_400_and_the_activity_stays_in_progress(server_db):
    env = Env(server_db)
    c = env.client()
    c.register()
    a = env.script(c.insecure_id)
    c.exchange()
    assert [op["operation-id"] for op in c.operations()] == [a]
    code, body = _send_raw(env, c, [_result(a, **{"result-code": 2**40})])
    assert code == 400, body
    assert b"result-code" in body
    assert env.activity(a).state == "in-progress"


def test_a_nul_in_script_output_is_stored_replaced(server_db):
    # landscape-client sends script output decoded with replacement: NUL is valid
    # UTF-8 and does arrive; PostgreSQL text cannot hold it.
    env = Env(server_db)
    c = env.client()
    c.register()
    a = env.script(c.insecure_id)
    c.exchange()
    c.send(pm.operation_result(a, codes.SUCCEEDED, result_text="a\0b\n"))
    c.exchange()
    act = env.activity(a)
    assert act.state == "succeeded"
    assert act.result_text == "a\ufffdb\n"


def test_a_nul_in_a_register_field_is_stored_replaced(server_db):
    env = Env(server_db)
    c = env.client(title="bad\0title")
    c.register()
    row = env.row(c.insecure_id)
    assert row.title == "bad\ufffdtitle"


def test_a_tag_longer_than_the_database_holds_is_400_and_registers_nothing(server_db):
    env = Env(server_db)
    c = env.client()
    c.exchange()  # the empty first exchange: register is now accepted
    before = env.counts()
    reg = {**pm.register("standalone", "t", "h", api=b"3.3", timestamp=1), "tags": "web, " + "x" * 201}
    code, body = _send_raw(env, c, [reg])
    assert code == 400, body
    assert b"tag" in body
    assert env.counts() == before


def test_a_stalled_connection_is_closed_after_the_idle_timeout():
    # An agent pointed at https:// on a plain-http port sends a TLS hello and
    # waits; so does a half-open connection behind NAT. Twisted's default would
    # hold each one for 12 hours.
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from server.web import IDLE_TIMEOUT, make_site

    clock = Clock()
    site = make_site(Resource(), 1024)
    site.callLater = clock.callLater  # read by twisted.web's channels for their timeouts
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    assert IDLE_TIMEOUT <= 600


@pytest.mark.parametrize("title", ["", "  \n "])
def test_a_blank_computer_title_is_400_and_registers_nothing(server_db, title):
    env = Env(server_db)
    c = env.client()
    c.exchange()
    before = env.counts()
    reg = {**pm.register("standalone", "t", "h", api=b"3.3", timestamp=1), "computer_title": title}
    code, body = _send_raw(env, c, [reg])
    assert code == 400, body
    assert b"computer_title" in body
    assert env.counts() == before
