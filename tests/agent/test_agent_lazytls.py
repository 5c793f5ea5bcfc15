"""An agent whose URLs are all plain http does not load the TLS stack; one
that talks https does, and works."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import make_config
from agent.lazytls import needs_tls

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/tlscerts.py


@pytest.mark.parametrize("values, expected", [
    ({"url": "http://r.example/message-system"}, False),
    ({"url": "https://r.example/message-system"}, True),
    ({"url": "HTTPS://r.example/message-system"}, True),
    ({"url": "http://r.example/message-system", "ping_url": "https://r.example/ping"}, True),
])
def test_needs_tls_looks_at_both_urls(values, expected):
    assert needs_tls(make_config(values)) is expected


def test_without_tls_keeps_openssl_out_of_twisted_and_lifts_the_ban_after():
    code = (
        "import sys, json\n"
        "from agent.lazytls import without_tls\n"
        "with without_tls():\n"
        "    from twisted.internet import reactor\n"
        "    import treq\n"
        "    from twisted.web import client\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('OpenSSL', 'cryptography'))\n"
        "import OpenSSL.SSL\n"  # a plugin may still use it
        "print(json.dumps([loaded, client.SSL is None]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded, web_client_without_ssl = json.loads(done.stdout)
    assert loaded == []
    assert web_client_without_ssl is True


def _agent_until_registered(tmp_path: Path, scheme: str, *extra: str) -> str:
    """Run the fake server and a real agent process; return the agent's
    /proc/<pid>/maps once the server has seen it register."""
    state_file = tmp_path / "server.json"
    server_args = []
    if scheme == "https":
        from tlscerts import make_server_tls

        tls = make_server_tls(tmp_path / "tls")
        server_args = [str(tls.key), str(tls.cert)]
        extra = (*extra, "--ssl-public-key", str(tls.ca))
    server = subprocess.Popen([sys.executable, str(HERE / "fakeserver_process.py"), str(state_file), *server_args])
    agent = None
    try:
        deadline = time.monotonic() + 30
        while not state_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.05)
        port = json.loads(state_file.read_text())["port"]
        agent = subprocess.Popen(
            [sys.executable, "-m", "ridgeline", "agent", "--url", f"{scheme}://127.0.0.1:{port}/message-system",
             "--data-path", str(tmp_path / "data"), "--computer-title", "lean", *extra],
            stderr=subprocess.PIPE, text=True)
        while "lean" not in json.loads(state_file.read_text())["computers"]:
            if agent.poll() is not None or time.monotonic() > deadline:
                agent.kill()
                pytest.fail(f"the agent did not register over {scheme}: {agent.stderr.read()}")
            time.sleep(0.1)
        return Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        for p in (agent, server):
            if p is not None:
                p.terminate()
                p.wait(10)


def test_an_http_agent_registers_without_loading_tls(tmp_path):
    maps = _agent_until_registered(tmp_path, "http")
    assert "cryptography" not in maps and "OpenSSL" not in maps


def test_an_https_agent_loads_tls_and_registers(tmp_path):
    maps = _agent_until_registered(tmp_path, "https")
    assert "cryptography" in maps  # pyOpenSSL's backend, mapped into the agent
