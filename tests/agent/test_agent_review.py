"""Agent, breaker review: configuration values that would fail later (or never
work), a server reply with an operation id the store cannot hold, a huge reply,
and an outbox whose batch would exceed what a server accepts."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from agent_support import settle
from twisted.internet.defer import Deferred

from agent import exchange as agent_exchange
from agent.config import ConfigError, make_config
from protocol import bpickle

URL = "http://server.test/message-system"


# --- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["exchange_interval", "urgent_exchange_interval", "ping_interval"])
@pytest.mark.parametrize("value", ["5_0", "\u0661\u0662", "99999999999999999999", str(8 * 86400)])
def test_intervals_are_plain_digits_and_at_most_a_week(key, value):
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, key: value})
    assert e.value.key == key


def test_an_interval_of_a_week_is_accepted():
    assert make_config({"url": URL, "exchange_interval": str(7 * 86400)}).exchange_interval == 7 * 86400


@pytest.mark.parametrize(
    "url",
    ["http://[::1/message-system", "http://h:99999/message-system", "http://user:pw@h/message-system",
     "http://h/message-system#frag", "http://h:abc/message-system"],
)
def test_urls_that_can_never_work_are_refused(url):
    for key in ("url", "ping_url"):
        values = {"url": URL, key: url}
        with pytest.raises(ConfigError) as e:
            make_config(values)
        assert e.value.key == key


def test_ipv6_and_port_urls_are_fine():
    c = make_config({"url": "https://[::1]:8443/message-system"})
    assert c.ping_url == "https://[::1]:8443/ping"


def test_a_tag_longer_than_the_server_holds_is_refused():
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, "tags": "web, " + "x" * 201})
    assert e.value.key == "tags"


def test_script_output_limit_has_a_ceiling():
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, "script_output_limit": "99999999999999"})
    assert e.value.key == "script_output_limit"


def test_all_cannot_be_mixed_with_user_names():
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, "script_users": "ALL, root"})
    assert e.value.key == "script_users"


def test_ssl_public_key_must_hold_pem_certificates(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, "ssl_public_key": str(bad)})
    assert e.value.key == "ssl_public_key"


def _self_signed_pem(name: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_ca_bundle_trusts_every_certificate_in_it(tmp_path):
    # curl's CAINFO (landscape) reads every certificate of the file; so must we.
    from agent.service import load_ca_certificates

    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(_self_signed_pem("intermediate") + b"\n" + _self_signed_pem("root"))
    certs = load_ca_certificates(str(bundle))
    assert sorted(c.getSubject().commonName for c in certs) == [b"intermediate", b"root"]


def _run_agent(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "ridgeline", "agent", "--url", URL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "key, make_value",
    [
        ("log_dir", lambda tmp: str(tmp / "afile" / "logs")),
        ("data_path", lambda tmp: str(tmp / "afile" / "data")),
        ("plugins", lambda tmp: "no-such-plugin"),
    ],
)
def test_an_unusable_setting_stops_the_agent_with_one_line_naming_it(tmp_path, key, make_value):
    (tmp_path / "afile").write_text("a file, not a directory")
    args = ["--data-path", str(tmp_path / "data"), "--" + key.replace("_", "-"), make_value(tmp_path)]
    done = _run_agent(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert key in lines[0]
    assert "Traceback" not in done.stderr


# --- the exchange -------------------------------------------------------------------


def test_an_operation_id_beyond_64_bits_is_skipped_not_wedging_the_agent(make_agent, clock, stub, server):
    agent = make_agent()
    agent.start()
    settle(clock, stub, 1)
    computer = server.only_computer()
    server.send({"type": "test-op", "operation-id": 10**30})
    server.send({"type": "test-op", "operation-id": 2**64, "x": 1})
    settle(clock, stub, 61)
    assert agent.failures == 0
    before = agent.store.get_state().server_sequence
    assert before == computer.next_to_assign  # both consumed, nothing stuck
    settle(clock, stub, 1000)
    assert agent.store.get_state().server_sequence == before


def test_a_reply_over_the_limit_fails_the_exchange_without_keeping_it(make_agent, clock, stub, server, monkeypatch):
    monkeypatch.setattr(agent_exchange, "MAX_REPLY_BYTES", 2000)
    agent = make_agent()
    agent.start()
    settle(clock, stub, 1)
    server.send({"type": "test-data-for-agent", "blob": "x" * 5000})
    agent.schedule_urgent()
    settle(clock, stub, 61)
    assert agent.failures >= 1
    assert agent.running


def test_the_outbox_goes_out_in_batches_a_server_accepts(make_agent, clock, stub, server, monkeypatch):
    monkeypatch.setattr(agent_exchange, "MAX_PAYLOAD_BYTES", 100_000)
    agent = make_agent()
    agent.start()
    settle(clock, stub, 1)
    computer = server.only_computer()
    for i in range(6):
        agent.queue({"type": "test-data", "n": i, "data": "y" * 30_000})
    sizes_before = len(server.requests)
    settle(clock, stub, 600)
    sent = [r["payload"]["messages"] for r in server.requests[sizes_before:]]
    assert all(len(bpickle.dumps(m)) <= 100_000 for m in sent)
    assert [m["n"] for m in computer.received if m["type"] == "test-data"] == list(range(6))


def test_one_message_over_the_budget_still_goes_alone(make_agent, clock, stub, server, monkeypatch):
    monkeypatch.setattr(agent_exchange, "MAX_PAYLOAD_BYTES", 1000)
    agent = make_agent()
    agent.start()
    settle(clock, stub, 1)
    computer = server.only_computer()
    agent.queue({"type": "test-data", "n": 0, "data": "z" * 5000})
    agent.queue({"type": "test-data", "n": 1, "data": "z" * 5000})
    settle(clock, stub, 300)
    assert [m["n"] for m in computer.received if m["type"] == "test-data"] == [0, 1]


@pytest.mark.parametrize("key", ["computer_title", "registration_key", "account_name", "data_path", "url"])
def test_control_characters_are_refused_in_every_value(key):
    with pytest.raises(ConfigError) as e:
        make_config({"url": URL, key: "http://x/message-system\nurl = http://evil/message-system"})
    assert e.value.key == key


def test_configure_refuses_a_value_that_would_inject_a_line(tmp_path):
    conf = tmp_path / "agent.conf"
    done = subprocess.run(
        [sys.executable, "-m", "ridgeline", "agent", "configure", "--config", str(conf), "--url", URL,
         "--computer-title", "web\nurl = http://evil/message-system"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "computer_title" in done.stderr
    assert not conf.exists()


def test_a_ping_reply_over_its_limit_is_not_read(make_agent, clock, stub, server, monkeypatch):
    agent = make_agent()
    agent.start()
    settle(clock, stub, 1)
    server.ping_answer = True  # b"du8:messagesb1;": 15 bytes
    d = Deferred.fromCoroutine(agent.ping())
    settle(clock, stub)
    assert d.result is True
    monkeypatch.setattr(agent_exchange, "MAX_PING_REPLY_BYTES", 10)
    d = Deferred.fromCoroutine(agent.ping())
    settle(clock, stub)
    assert d.result is False


def test_a_plugin_result_text_is_capped_so_the_outbox_never_wedges(make_agent, clock, stub, server):
    from agent.hookspecs import OperationResult, hookimpl
    from protocol import codes

    class Chatty:
        @hookimpl
        def ridgeline_agent_message_types(self):
            return ["chatty"]

        @hookimpl
        def ridgeline_agent_handle(self, message, context):
            from twisted.internet.defer import succeed

            return succeed(OperationResult(codes.SUCCEEDED, "é" * (agent_exchange.MAX_RESULT_TEXT + 10)))

    agent = make_agent(plugins=[("chatty", Chatty())])
    agent.start()
    settle(clock, stub, 1)
    server.send({"type": "chatty", "operation-id": 5})
    settle(clock, stub, 130)
    (got,) = server.received_messages("operation-result")
    assert len(got["result-text"]) <= agent_exchange.MAX_RESULT_TEXT
    assert got["result-text"].startswith("éé")
    assert got["result-text"].endswith("**RESULT TRUNCATED**")
