"""The agent core against the fake server: registration, tokens, sequences,
backoff, ping, dispatch, durability across restarts."""

from __future__ import annotations

import os
import subprocess
import time

from agent_support import settle
from twisted.internet.defer import Deferred

from agent.hookspecs import OperationResult, hookimpl
from agent.procs import process_start_time
from agent.store import OperationKey
from protocol import codes
from protocol import exchange as px


class Recorder:
    """A plugin handling ``test-op``; results are released by the test."""

    def __init__(self, store_probe=None):
        self.calls = []
        self.pending: dict[int, Deferred] = {}
        self.canceled = []
        self.store_probe = store_probe

    @hookimpl
    def ridgeline_agent_message_types(self):
        return ["test-op", "test-raise"]

    @hookimpl
    def ridgeline_agent_handle(self, message, context):
        if message["type"] == "test-raise":
            raise ValueError("the widget is missing")
        if message["type"] != "test-op":
            return None
        op = message["operation-id"]
        seen = self.store_probe(op) if self.store_probe else None
        self.calls.append((op, seen))
        d = Deferred()
        self.pending[op] = d
        return d

    @hookimpl
    def ridgeline_agent_cancel(self, operation_id):
        if operation_id in self.pending:
            self.canceled.append(operation_id)
            self.pending.pop(operation_id).callback(OperationResult(codes.FAILED, "canceled", codes.CANCELED))
            return True
        return None


def register(agent, clock, stub, server):
    agent.start()
    settle(clock, stub, 1)
    return server.only_computer()


def results(server):
    return {m["operation-id"]: m for m in server.received_messages("operation-result")}


def test_fresh_agent_registers(make_agent, clock, stub, server):
    agent = make_agent(tags="web, prod")
    agent.start()
    settle(clock, stub)
    # First exchange: empty, no X-Computer-ID, the full client-accepted-types list.
    first = server.requests[0]
    assert first["payload"]["messages"] == []
    assert b"x-computer-id" not in first["headers"]
    assert first["headers"][b"x-message-api"] == px.DEFAULT_SERVER_API
    assert first["headers"][b"content-type"] == b"application/octet-stream"
    assert "set-id" in first["payload"]["client-accepted-types"]
    assert "cancel-activity" in first["payload"]["client-accepted-types"]
    assert "test-op" not in first["payload"]["client-accepted-types"]
    # The server accepted "register": the agent registered at once.
    reg = server.requests[1]["payload"]["messages"]
    assert [m["type"] for m in reg] == ["register"]
    assert reg[0]["account_name"] == "standalone"
    assert reg[0]["computer_title"] == "box1"
    assert reg[0]["tags"] == "web, prod"
    computer = server.only_computer()
    state = agent.store.get_state()
    assert state.secure_id == computer.secure_id
    assert state.insecure_id == computer.insecure_id
    assert state.server_uuid == server.uuid.decode()
    assert "register" not in state.accepted_types and "operation-result" in state.accepted_types
    # Next exchange: authenticated with the id and the token from the last reply.
    settle(clock, stub, agent.config.urgent_exchange_interval)
    last = server.requests[-1]
    assert last["headers"][b"x-computer-id"] == computer.secure_id
    assert b"x-exchange-token" in last["headers"]
    assert last["payload"]["accepted-types"] == px.accepted_types_digest(computer.accepted_types)


def test_token_is_sent_once_and_rotated(make_agent, clock, stub, server):
    agent = make_agent()
    computer = register(agent, clock, stub, server)
    tokens = []
    for _ in range(3):
        expected = computer.token
        Deferred.fromCoroutine(agent.exchange())
        settle(clock, stub)
        assert server.requests[-1]["headers"][b"x-exchange-token"] == expected
        tokens.append(expected)
    assert len(set(tokens)) == 3
    # A failed exchange forgets the token: the next one goes without.
    server.fail_next.append((500, {}))
    Deferred.fromCoroutine(agent.exchange())
    settle(clock, stub)
    Deferred.fromCoroutine(agent.exchange())
    settle(clock, stub)
    assert b"x-exchange-token" not in server.requests[-1]["headers"]


def test_unknown_id_and_clone_of_make_the_agent_register_again(make_agent, clock, stub, server):
    agent = make_agent()
    computer = register(agent, clock, stub, server)
    old_id = computer.secure_id
    # Another machine with the same identity has used the token: we are a clone.
    computer.token = b"someone-else"
    agent.store.update_state(exchange_token=b"stale")
    Deferred.fromCoroutine(agent.exchange())
    settle(clock, stub)
    state = agent.store.get_state()
    assert state.secure_id is None and state.clone_secure_id == old_id
    # The server's list for an unknown computer includes register again.
    settle(clock, stub, agent.config.urgent_exchange_interval * 3)
    registers = [m for r in server.requests for m in r["payload"]["messages"] if m["type"] == "register"]
    assert registers[-1]["clone_secure_id"] == old_id.decode()
    assert len(server.computers) == 2
    assert agent.store.get_state().secure_id not in (None, old_id)
    assert agent.store.get_state().clone_secure_id is None


def test_unknown_id_without_clone_of(make_agent, clock, stub, server):
    agent = make_agent()
    register(agent, clock, stub, server)
    server.computers.clear()  # the server forgot us
    settle(clock, stub, agent.config.exchange_interval + 1)
    settle(clock, stub, agent.config.urgent_exchange_interval * 2)
    registers = [m for r in server.requests for m in r["payload"]["messages"] if m["type"] == "register"]
    assert len(registers) == 2
    assert "clone_secure_id" not in registers[-1] or registers[-1]["clone_secure_id"] is None
    assert agent.store.get_state().secure_id == server.only_computer().secure_id


def test_registration_failure_is_logged_and_retried_later(make_agent, clock, stub, server):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        server.registration_reply = {"type": "registration", "info": "unknown-account"}
        agent = make_agent()
        agent.start()
        settle(clock, stub, 5)
        count = len(server.requests)
        assert count == 2  # the empty exchange, one register; no hammering
        assert any("Registration failed: the server has no account named 'standalone'" in formatEvent(e) for e in events)
        server.registration_reply = None
        settle(clock, stub, agent.config.exchange_interval)
        assert agent.store.get_state().secure_id is not None
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_failures_back_off_and_honour_retry_after(make_agent, clock, stub, server):
    agent = make_agent(urgent_exchange_interval=10, exchange_interval=100)
    agent.start()
    server.fail_next.extend([(500, {})] * 6)
    times = []
    orig = server.handle

    def timed(headers, body):
        times.append(clock.seconds())
        return orig(headers, body)

    server.handle = timed
    settle(clock, stub, 2000, step=1)
    gaps = [b - a for a, b in zip(times, times[1:])][:6]
    # Exponential: each gap at least ~1.5x the one before (jitter is 75-100%).
    for a, b in zip(gaps, gaps[1:5]):
        assert b >= a * 1.4, gaps
    assert all(g <= 3600 for g in gaps)
    # 503 with Retry-After: the agent waits at least that long.
    server.fail_next.append((503, {b"Retry-After": b"500"}))
    Deferred.fromCoroutine(agent.exchange())
    settle(clock, stub)
    before = len(times)
    settle(clock, stub, 499, step=1)
    assert len(times) == before
    settle(clock, stub, 60, step=1)
    assert len(times) == before + 1


def test_ping_triggers_an_urgent_exchange(make_agent, clock, stub, server):
    agent = make_agent(urgent_exchange_interval=5, ping_interval=3, exchange_interval=1000)
    computer = register(agent, clock, stub, server)
    settle(clock, stub, 10)
    count = len(server.requests)
    settle(clock, stub, 20)
    assert len(server.requests) == count  # nothing waiting: pings only
    assert server.pings and server.pings[-1][b"insecure_id"] == [str(computer.insecure_id).encode()]
    server.send({"type": "test-data-for-agent"})
    settle(clock, stub, 3 + 5)
    assert len(server.requests) == count + 1


def test_operation_recorded_before_it_runs_and_result_sent(make_agent, clock, stub, server, data_path):
    probe = {}

    def store_probe(op):
        state = agent.store.get_state()
        return agent.store.get_operation(OperationKey(state.server_uuid, state.secure_id, op)).state

    plugin = Recorder(store_probe)
    agent = make_agent(plugins=[("recorder", plugin)])
    register(agent, clock, stub, server)
    assert "test-op" in server.only_computer().client_types
    server.send({"type": "test-op", "operation-id": 41})
    settle(clock, stub, 61)
    assert plugin.calls == [(41, "running")]
    plugin.pending[41].callback(OperationResult(codes.SUCCEEDED, "all fine"))
    settle(clock, stub, 61)
    got = results(server)[41]
    assert (got["status"], got["result-text"]) == (codes.SUCCEEDED, "all fine")
    assert probe == {}


def test_resent_operation_is_not_run_again(make_agent, clock, stub, server):
    plugin = Recorder()
    agent = make_agent(plugins=[("recorder", plugin)])
    computer = register(agent, clock, stub, server)
    server.send({"type": "test-op", "operation-id": 7})
    settle(clock, stub, 61)
    assert [c[0] for c in plugin.calls] == [7]
    # The server lost track and sends it again (a resend after a lost ack).
    computer.outbox.append({"type": "test-op", "operation-id": 7})
    settle(clock, stub, 61)
    assert [c[0] for c in plugin.calls] == [7]
    plugin.pending[7].callback(OperationResult(codes.SUCCEEDED, "once"))
    settle(clock, stub, 61)
    assert len([m for m in server.received_messages("operation-result") if m["operation-id"] == 7]) == 1


def test_no_handler_and_raising_handler_give_failed_results(make_agent, clock, stub, server):
    agent = make_agent(plugins=[("recorder", Recorder())])
    register(agent, clock, stub, server)
    server.send({"type": "shutdown", "operation-id": 1, "reboot": False})
    server.send({"type": "test-raise", "operation-id": 2})
    settle(clock, stub, 130)
    got = results(server)
    assert (got[1]["status"], got[1]["result-code"]) == (codes.FAILED, codes.NO_HANDLER)
    assert "shutdown" in got[1]["result-text"]
    assert got[2]["status"] == codes.FAILED
    assert "ValueError: the widget is missing" in got[2]["result-text"]
    assert "Traceback" not in got[2]["result-text"]
    assert agent.running


def test_cancel_activity_goes_to_the_plugin(make_agent, clock, stub, server):
    plugin = Recorder()
    agent = make_agent(plugins=[("recorder", plugin)])
    register(agent, clock, stub, server)
    server.send({"type": "test-op", "operation-id": 5})
    settle(clock, stub, 61)
    server.send({"type": "cancel-activity", "target-operation-id": 5})
    server.send({"type": "cancel-activity", "target-operation-id": 999})  # ignored
    settle(clock, stub, 130)
    assert plugin.canceled == [5]
    assert results(server)[5]["result-code"] == codes.CANCELED


def test_set_intervals_and_resynchronize(make_agent, clock, stub, server):
    agent = make_agent()
    register(agent, clock, stub, server)
    server.send({"type": "set-intervals", "exchange": 120, "urgent-exchange": 20, "ping": 15})
    server.send({"type": "resynchronize", "operation-id": 77})
    settle(clock, stub, 61)
    assert (agent.config.exchange_interval, agent.config.urgent_exchange_interval, agent.config.ping_interval) == (
        120, 20, 15)
    settle(clock, stub, 21)
    assert {"type": "resynchronize", "operation-id": 77}.items() <= server.received_messages("resynchronize")[0].items()
    # Intervals survive a restart.
    agent.stop()
    again = make_agent()
    assert again.config.exchange_interval == 120


def test_outbox_resent_when_the_reply_is_lost(make_agent, clock, stub, server):
    plugin = Recorder()
    agent = make_agent(plugins=[("recorder", plugin)])
    register(agent, clock, stub, server)
    server.send({"type": "test-op", "operation-id": 3})
    settle(clock, stub, 61)
    plugin.pending[3].callback(OperationResult(codes.SUCCEEDED, "x"))
    # The server takes the result but its reply never arrives.
    server.lose_next_reply = 1
    settle(clock, stub, 61)
    assert len(server.received_messages("operation-result")) == 1
    assert agent.store.count_pending() == 1  # still unacknowledged
    settle(clock, stub, 200)
    # Resent with the same sequence number; the server dropped the duplicate.
    sent = [r for r in server.requests if any(m["type"] == "operation-result" for m in r["payload"]["messages"])]
    assert len(sent) == 2 and sent[0]["payload"]["sequence"] == sent[1]["payload"]["sequence"]
    assert len(server.received_messages("operation-result")) == 1
    assert agent.store.count_pending() == 0


def test_third_party_plugin_from_an_entry_point(make_agent, make_distribution, clock, stub, server):
    make_distribution(
        "hello-plugin",
        files={"hello_plugin.py": '''
            from agent.hookspecs import hookimpl, OperationResult
            from protocol import codes

            @hookimpl
            def ridgeline_agent_message_types():
                return ["hello"]

            @hookimpl
            def ridgeline_agent_handle(message, context):
                if message["type"] != "hello":
                    return None
                async def run():
                    return OperationResult(codes.SUCCEEDED, f"hello from op {context.operation_id}")
                return run()
        '''},
        entry_points={"ridgeline.agent": {"hello": "hello_plugin"}},
    )
    agent = make_agent(entry_points=True)
    assert "hello" in agent.plugins.names()
    register(agent, clock, stub, server)
    server.send({"type": "hello", "operation-id": 9})
    settle(clock, stub, 130)
    assert results(server)[9]["result-text"] == "hello from op 9"


def test_restart_with_a_running_operation_reports_interrupted_once(make_agent, clock, stub, server, data_path):
    plugin = Recorder()
    agent = make_agent(plugins=[("recorder", plugin)])
    register(agent, clock, stub, server)
    server.send({"type": "test-op", "operation-id": 11})
    settle(clock, stub, 61)
    # What the operation runs: a real process group with a background child.
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    try:
        time.sleep(0.2)
        state = agent.store.get_state()
        key = OperationKey(state.server_uuid, state.secure_id, 11)
        agent.store.set_operation_process(key, proc.pid, process_start_time(proc.pid))
        # The agent dies here (no result), and a new one starts on the same data.
        agent.stop()
        agent2 = make_agent(plugins=[("recorder", Recorder())])
        agent2.start()
        proc.wait(timeout=5)  # the leftover group was killed
        settle(clock, stub, 61)
        got = [m for m in server.received_messages("operation-result") if m["operation-id"] == 11]
        assert len(got) == 1
        assert (got[0]["status"], got[0]["result-code"]) == (codes.FAILED, codes.INTERRUPTED)
        # A third start reports nothing more.
        agent2.stop()
        agent3 = make_agent()
        assert agent3.recover_interrupted() == 0
        # The late result of the old run is not sent either (the operation is closed).
        plugin.pending[11].callback(OperationResult(codes.SUCCEEDED, "late"))
        assert agent3.store.count_pending() == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
