"""The agent's SQLite store: outbox and ack rules, operations, durability across reopen."""

from __future__ import annotations

from agent.store import DONE, RUNNING, AgentStore, OperationKey
from protocol import exchange as px


def msg(n, type_="test-data"):
    return {"type": type_, "n": n}


def test_state_survives_reopen(data_path):
    store = AgentStore.open(data_path)
    store.update_state(secure_id=b"sec", insecure_id=7, server_uuid="u", accepted_types=["b", "a", "a"])
    store.close()
    state = AgentStore.open(data_path).get_state()
    assert (state.secure_id, state.insecure_id, state.server_uuid) == (b"sec", 7, "u")
    assert state.accepted_types == ("a", "b")


def test_token_is_forgotten_when_taken(data_path):
    store = AgentStore.open(data_path)
    store.update_state(exchange_token=b"tok")
    assert store.take_exchange_token() == b"tok"
    assert store.get_state().exchange_token is None
    assert store.take_exchange_token() is None


def test_messages_of_unaccepted_types_are_held_then_released(data_path):
    store = AgentStore.open(data_path)
    store.set_accepted_types(["test-data"])
    store.add_message(msg(1))
    store.add_message(msg(2, "operation-result"))
    assert [m["n"] for m in store.pending_messages(10)] == [1]
    assert store.count_held() == 1
    assert store.set_accepted_types(["test-data", "operation-result"]) is True
    assert [m["n"] for m in store.pending_messages(10)] == [1, 2]
    assert store.set_accepted_types(["operation-result"]) is False
    assert [m["n"] for m in store.pending_messages(10)] == [2]


def apply(store, n):
    state = store.get_state()
    ack = px.client_ack(n, state.sequence, state.pending_offset, store.count_pending())
    store.apply_ack(ack.action, ack.sequence, ack.pending_offset, ack.delete_acknowledged)
    return ack


def test_outbox_kept_until_acknowledged_and_resent_on_rewind(data_path):
    store = AgentStore.open(data_path)
    store.set_accepted_types(["test-data"])
    for i in range(3):
        store.add_message(msg(i))
    assert [m["n"] for m in store.pending_messages(10)] == [0, 1, 2]
    # The server took 0..2: the batch stays retained but is no longer pending.
    assert apply(store, 3).action == "ack"
    assert store.pending_messages(10) == []
    assert len(store.all_messages()) == 3
    # The server lost them and asks from 1 again: rewind, resend 1 and 2.
    assert apply(store, 1).action == "rewind"
    assert [m["n"] for m in store.pending_messages(10)] == [1, 2]
    assert apply(store, 3).action == "ack"
    store.add_message(msg(3))
    assert apply(store, 4).action == "ack"
    # Only the last acknowledged batch is retained now.
    assert [m["n"] for _, m in store.all_messages()] == [3]


def test_operation_is_recorded_once_and_finished_atomically(data_path):
    store = AgentStore.open(data_path)
    store.set_accepted_types(["operation-result"])
    key = OperationKey("u", b"sec", 12)
    assert store.begin_message(1, key, "execute-script", 5.0) is True
    assert store.get_state().server_sequence == 1
    assert store.get_operation(key).state == RUNNING
    assert store.begin_message(2, key, "execute-script", 6.0) is False  # a resend
    assert store.get_state().server_sequence == 2
    store.set_operation_process(key, 4242, 123.0)
    op = store.get_operation(key)
    assert (op.pgid, op.process_start) == (4242, 123.0)
    result = {"type": "operation-result", "operation-id": 12, "status": 6}
    assert store.finish_operation(key, result) is True
    assert store.finish_operation(key, result) is False  # never queued twice
    assert store.get_operation(key).state == DONE
    assert [m for _, m in store.all_messages()] == [result]
    # The same operation id from another identity is another operation.
    assert store.begin_message(3, OperationKey("u", b"other", 12), "execute-script", 7.0) is True
