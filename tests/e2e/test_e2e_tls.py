"""End to end over TLS: ``ridgeline server --listen ssl:...`` with a certificate
of a throwaway private CA (made in the test's tmp_path), real agents and the
admin CLI as real processes on loopback.

- An agent whose ``ssl_public_key`` is that CA registers, pings and runs a
  script with an attachment; the admin CLI trusts the CA with ``--ca-file``.
- Agents without the CA, or with another one, never exchange: each attempt is
  one clear log line, they back off, and the server registers nobody.
"""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from procs import Agent, Server, ridgeline, wait_for_computers, wait_until
from tlscerts import make_ca, make_server_tls

pytestmark = pytest.mark.e2e

EXCHANGE_FAILED = re.compile(r"Message exchange failed: (.*); next attempt in (\d+) s$")


def _tls_server(procs, **tls_options):
    tls = make_server_tls(procs.root / "tls", **tls_options)
    key = secrets.token_urlsafe(16)
    server = Server(procs, "server", data_dir=procs.root / "server", registration_key=key, tls=tls).start()
    return server, tls, key


def _cli(procs, server, *args, ca_file=True):
    key_file = procs.root / "api.key"
    if not key_file.exists():
        server.api()  # creates the key
        key_file.write_text(server._api_key + "\n")
    extra = ["--ca-file", str(server.tls.ca)] if ca_file else []
    return procs.run(ridgeline(*args, "--url", server.url, "--api-key-file", str(key_file), *extra))


def test_agent_and_cli_over_https_with_a_private_ca(procs, user):
    # The server sends its intermediate CA (extraCertChain); clients trust the root only.
    server, tls, key = _tls_server(procs, intermediate=True)
    assert server.url.startswith("https://")
    agent = Agent(procs, "tls-agent", url=server.message_system_url, registration_key=key, user=user)
    agent.write_config(ssl_public_key=str(tls.ca))
    agent.start()

    def alive():
        server.child.check_alive()
        agent.child.check_alive()

    computers = wait_for_computers(server.api(), ["tls-agent"], alive=alive)

    # The admin CLI over https: a script with an attachment (uploaded by the
    # CLI, downloaded by the agent, both over https), watched to the end.
    (procs.root / "greeting.txt").write_text("hello over tls\n")
    done = _cli(procs, server, "activities", "run-script", "--computer", str(computers["tls-agent"]),
                "--code", "#!/bin/sh\ncat \"$LANDSCAPE_ATTACHMENTS/greeting.txt\"\n", "--user", user,
                "--attach", str(procs.root / "greeting.txt"),
                "--summary", "tls", "--watch", "--interval", "0.5", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    activities = server.api().get("/activities", computer_id=computers["tls-agent"])["results"]
    assert [(a["state"], a["summary"]) for a in activities] == [("succeeded", "tls")]
    assert activities[0]["result_text"] == "hello over tls\n"

    listed = _cli(procs, server, "computers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["title"] for c in json.loads(listed.stdout)["results"]] == ["tls-agent"]
    # Without the CA the CLI refuses the certificate, in one line.
    refused = _cli(procs, server, "computers", "list", ca_file=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"ridgeline: error: cannot reach the server at {server.url}: "
                                     "its TLS certificate is not trusted")
    assert refused.stderr.count("\n") == 1

    # The ping goes to https://.../ping too (the server has no other port):
    # the server logged pings answered 200, and the agent nothing failing.
    wait_until(lambda: re.search(r'"POST /ping HTTP/1.1" 200', server.child.log_path.read_text()),
               "a ping over https", alive=alive)
    agent_log = agent.child.log_path.read_text()
    assert "Registered:" in agent_log
    assert "exchange failed" not in agent_log and "Ping failed" not in agent_log
    assert procs.log_problems() == []


def test_agents_that_do_not_trust_the_certificate_never_register(procs, user, tmp_path):
    server, _tls, key = _tls_server(procs)
    other_ca, _k, _c = make_ca(tmp_path / "other", "other")
    untrusting = Agent(procs, "no-ca", url=server.message_system_url, registration_key=key, user=user)
    wrong = Agent(procs, "wrong-ca", url=server.message_system_url, registration_key=key, user=user)
    wrong.write_config(ssl_public_key=str(other_ca))
    agents = [untrusting.start(), wrong.start()]
    started = time.monotonic()

    def alive():
        server.child.check_alive()
        for a in agents:
            a.child.check_alive()

    def failures(agent):
        lines = agent.child.log_path.read_text().splitlines()
        return [m for m in map(EXCHANGE_FAILED.search, lines) if m]

    # Four attempts each: back-off 1, 2, 4 s (with jitter) between them.
    wait_until(lambda: all(len(failures(a)) >= 4 for a in agents), "four failed attempts per agent",
               alive=alive, interval=0.5)
    elapsed = time.monotonic() - started
    for agent in agents:
        found = failures(agent)
        # A few attempts only, further and further apart (never a hammering loop).
        assert len(found) <= 6, (agent.name, elapsed, [m.group(0) for m in found])
        delays = [int(m.group(2)) for m in found]
        assert delays[:4] == sorted(delays[:4]) and delays[3] >= 3, (agent.name, delays)
        for m in found:
            assert m.group(1) == ("the server's TLS certificate could not be verified (certificate verify "
                                  "failed); set ssl_public_key to the file of the CA that signed it"), m.group(0)
        text = agent.child.log_path.read_text()
        assert "Traceback" not in text and "Failure" not in text and "Starting factory" not in text
        assert "Registered" not in text and "Registering" not in text
        # One line per attempt: nothing else is logged between the attempts.
        lines = [line for line in text.splitlines() if "Message exchange failed" not in line]
        assert len(lines) <= 2, lines  # the start-up line (and perhaps a stop line)

    assert server.api().get("/computers")["count"] == 0
    assert "registered" not in server.child.log_path.read_text()
    assert procs.log_problems() == []
