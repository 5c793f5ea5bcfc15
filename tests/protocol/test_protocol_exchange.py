"""protocol.exchange: payloads, the accepted-types digest, and the sequence rules."""

from __future__ import annotations

import hashlib

import pytest

from protocol import bpickle
from protocol.exchange import (
    CLIENT_API,
    DEFAULT_SERVER_API,
    MAX_MESSAGES_PER_EXCHANGE,
    SERVER_API,
    ExchangeRequest,
    ExchangeResponse,
    PayloadError,
    accepted_types_digest,
    client_ack,
    expected_after_reply,
    receive_client_messages,
    server_messages_to_send,
)


def test_constants():
    assert (SERVER_API, CLIENT_API, DEFAULT_SERVER_API) == (b"3.3", b"3.8", b"3.2")
    assert MAX_MESSAGES_PER_EXCHANGE == 100


def test_accepted_types_digest():
    assert accepted_types_digest([]).hex() == "d41d8cd98f00b204e9800998ecf8427e"
    assert accepted_types_digest(["set-id", "register"]) == hashlib.md5(b"register;set-id").digest()
    assert accepted_types_digest(["b", "a"]) == accepted_types_digest(["a", "b"])
    assert len(accepted_types_digest(["x"])) == 16


# --- requests --------------------------------------------------------------------------------

# A fresh client's first exchange, as observed (spec §3.1).
FIRST_EXCHANGE = {
    "accepted-types": hashlib.md5(b"").digest(),
    "client-accepted-types": [
        "accepted-types", "custom-graph-add", "custom-graph-remove", "execute-script", "registration",
        "resynchronize", "set-id", "set-intervals", "unknown-id",
    ],
    "client-api": b"3.8",
    "messages": [],
    "next-expected-sequence": 0,
    "sequence": 0,
    "server-api": b"3.2",
    "total-messages": 0,
}


def test_first_exchange_request_round_trips():
    request = ExchangeRequest.from_wire(bpickle.loads(bpickle.dumps(FIRST_EXCHANGE)))
    assert request.server_api == b"3.2" and request.client_api == b"3.8"
    assert request.sequence == 0 and request.next_expected_sequence == 0 and request.total_messages == 0
    assert request.accepted_types_digest == hashlib.md5(b"").digest()
    assert request.client_accepted_types[0] == "accepted-types"
    assert not request.bare
    assert request.to_wire() == FIRST_EXCHANGE


def test_bare_landscape_config_request():
    register = {"type": "register", "account_name": "a", "computer_title": "t", "hostname": "h"}
    request = ExchangeRequest.from_wire({"messages": [register]}, message_api=b"3.3")
    assert request.bare
    assert request.sequence is None and request.next_expected_sequence is None
    assert request.server_api == b"3.3" and request.messages == [register]
    assert ExchangeRequest.from_wire({"messages": []}).server_api == DEFAULT_SERVER_API


def test_request_str_server_api_is_accepted():
    assert ExchangeRequest.from_wire({"server-api": "3.3", "messages": []}).server_api == b"3.3"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"messages": None}, "messages"),
        ({"messages": [1]}, "messages"),
        ({"sequence": "0"}, "sequence"),
        ({"sequence": -1}, "sequence"),
        ({"next-expected-sequence": True}, "next-expected-sequence"),
        ({"total-messages": 1.0}, "total-messages"),
        ({"server-api": 3.3}, "server-api"),
        ({"accepted-types": 5}, "accepted-types"),
        ({"client-accepted-types": "register"}, "client-accepted-types"),
        ({"client-accepted-types": [1]}, "client-accepted-types"),
    ],
)
def test_request_bad_key_is_named(change, key):
    with pytest.raises(PayloadError) as info:
        ExchangeRequest.from_wire({**FIRST_EXCHANGE, **change})
    assert info.value.key == key and key in str(info.value)


def test_request_without_messages_or_not_a_dict():
    with pytest.raises(PayloadError) as info:
        ExchangeRequest.from_wire({"server-api": b"3.3"})
    assert info.value.key == "messages"
    with pytest.raises(PayloadError):
        ExchangeRequest.from_wire([1])


# --- responses -------------------------------------------------------------------------------


def test_response_wire_types():
    response = ExchangeResponse(
        server_api=SERVER_API,
        server_uuid=b"uuid-1",
        messages=[{"type": "set-id", "id": b"S", "insecure-id": 1}],
        next_expected_sequence=3,
        next_exchange_token=b"token",
        client_accepted_types_hash=accepted_types_digest(["set-id"]),
    )
    wire = bpickle.dumps(response.to_wire())
    assert b"u19:next-exchange-tokens5:token" in wire  # bytes, never str (pitfall 2)
    assert ExchangeResponse.from_wire(bpickle.loads(wire)) == response


def test_response_always_has_the_required_keys():
    wire = ExchangeResponse(server_api=SERVER_API, server_uuid=b"u").to_wire()
    assert wire == {"server-api": b"3.3", "server-uuid": b"u", "messages": []}


def test_response_refuses_a_str_token():
    with pytest.raises(PayloadError) as info:
        ExchangeResponse(server_api=SERVER_API, server_uuid=b"u", next_exchange_token="t").to_wire()  # type: ignore[arg-type]
    assert info.value.key == "next-exchange-token"


@pytest.mark.parametrize("missing", ["server-api", "server-uuid", "messages"])
def test_response_missing_required_key(missing):
    wire = {"server-api": b"3.3", "server-uuid": b"u", "messages": []}
    del wire[missing]
    with pytest.raises(PayloadError) as info:
        ExchangeResponse.from_wire(wire)
    assert info.value.key == missing


def test_response_accepts_str_uuid_and_api():
    response = ExchangeResponse.from_wire({"server-api": "3.3", "server-uuid": "u", "messages": []})
    assert (response.server_api, response.server_uuid) == (b"3.3", b"u")
    assert response.next_expected_sequence is None and response.next_exchange_token is None


# --- sequence rules: server receiving ------------------------------------------------------


def test_receive_in_order():
    plan = receive_client_messages(expected=5, sequence=5, count=3)
    assert (plan.skip, plan.process, plan.next_expected, plan.gap) == (0, 3, 8, False)


def test_receive_resend_drops_the_overlap():
    # The reply to 5..7 was lost; the client resends 5..9 and the server has seen 5..7.
    plan = receive_client_messages(expected=8, sequence=5, count=5)
    assert (plan.skip, plan.process, plan.next_expected) == (3, 2, 10)


def test_receive_entirely_old_batch():
    plan = receive_client_messages(expected=10, sequence=5, count=3)
    assert (plan.skip, plan.process, plan.next_expected) == (3, 0, 10)


def test_receive_gap_takes_nothing():
    plan = receive_client_messages(expected=5, sequence=8, count=2)
    assert (plan.process, plan.next_expected, plan.gap) == (0, 5, True)


def test_receive_empty_request():
    assert receive_client_messages(expected=4, sequence=4, count=0).next_expected == 4


# --- sequence rules: server sending -------------------------------------------------------------


def test_send_normal_ack_deletes_what_the_client_processed():
    plan = server_messages_to_send(client_next_expected=5, oldest_kept=3, next_to_assign=8)
    assert (plan.send_from, plan.send_to, plan.delete_before) == (5, 8, 5)
    assert not plan.resynchronize and plan.renumber_by == 0 and plan.reason == "ok"


def test_send_rewind_resends_unacknowledged_messages():
    # The client never got the previous reply (3..7): it still expects 3.
    plan = server_messages_to_send(client_next_expected=3, oldest_kept=3, next_to_assign=8)
    assert (plan.send_from, plan.send_to, plan.delete_before) == (3, 8, 3)
    assert not plan.resynchronize


def test_send_nothing_pending():
    plan = server_messages_to_send(client_next_expected=8, oldest_kept=3, next_to_assign=8)
    assert plan.send_from == plan.send_to == 8 and plan.delete_before == 8


def test_send_ancient_resynchronizes():
    plan = server_messages_to_send(client_next_expected=1, oldest_kept=3, next_to_assign=8)
    assert plan.resynchronize and plan.reason == "ancient"
    assert (plan.send_from, plan.send_to, plan.delete_before) == (3, 8, 3)
    assert 3 + plan.renumber_by == 1  # the first kept message becomes the client's number


def test_send_too_high_resynchronizes():
    plan = server_messages_to_send(client_next_expected=56, oldest_kept=3, next_to_assign=8)
    assert plan.resynchronize and plan.reason == "too-high"
    assert (plan.send_from, plan.send_to) == (3, 8)
    assert 3 + plan.renumber_by == 56


def test_send_refuses_inconsistent_store():
    with pytest.raises(ValueError):
        server_messages_to_send(client_next_expected=3, oldest_kept=9, next_to_assign=8)


# --- sequence rules: client acknowledgement (spec §3.3) -------------------------------------------


def test_client_normal_ack():
    result = client_ack(next_expected=9, sequence=6, pending_offset=2, pending_count=5)
    assert (result.action, result.sequence, result.pending_offset, result.delete_acknowledged) == ("ack", 9, 3, True)


def test_client_rewind():
    result = client_ack(next_expected=5, sequence=6, pending_offset=2, pending_count=5)
    assert (result.action, result.sequence, result.pending_offset, result.delete_acknowledged) == (
        "rewind", 5, 1, False,
    )


def test_client_nothing_consumed_is_a_rewind_by_zero():
    result = client_ack(next_expected=6, sequence=6, pending_offset=2, pending_count=5)
    assert (result.action, result.sequence, result.pending_offset) == ("rewind", 6, 2)


def test_client_ancient_resyncs():
    # Observed: asking for 4 with S=6, P=1 made the client resend its retained message as 4.
    result = client_ack(next_expected=4, sequence=6, pending_offset=1, pending_count=1)
    assert (result.action, result.sequence, result.pending_offset, result.delete_acknowledged) == (
        "resync", 4, 0, False,
    )


def test_client_too_high_resyncs():
    # Observed: replying 56 with S=6 made the next exchange carry sequence 56.
    result = client_ack(next_expected=56, sequence=6, pending_offset=1, pending_count=1)
    assert (result.action, result.sequence, result.pending_offset, result.delete_acknowledged) == (
        "resync", 56, 0, True,
    )


def test_client_ack_of_exactly_everything_pending_is_not_too_high():
    assert client_ack(next_expected=11, sequence=6, pending_offset=0, pending_count=5).action == "ack"
    assert client_ack(next_expected=12, sequence=6, pending_offset=0, pending_count=5).action == "resync"


def test_missing_next_expected_means_the_whole_batch_arrived():
    assert expected_after_reply(None, sequence=6, sent=3) == 9
    assert expected_after_reply(7, sequence=6, sent=3) == 7
