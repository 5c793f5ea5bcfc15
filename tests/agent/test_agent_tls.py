"""The agent's https client against a real TLS listener on loopback: the
``ssl_public_key`` CA is trusted, any other certificate is refused, and a refusal
is logged as one plain line that says what to do (not a repr of nested Failures),
without Twisted's per-connection "Starting factory" noise."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from agent.config import make_config
from agent.exchange import describe_http_error
from agent.service import build_agent, make_http_client
from tlscerts import make_ca, make_server_tls


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello over tls"

    render_POST = render_GET


@pytest.fixture
def tls(tmp_path):
    return make_server_tls(tmp_path / "tls")


async def _listen(tls, hosts_note=""):
    from twisted.internet import reactor

    site = Site(Hello())
    site.noisy = False
    return await serverFromString(reactor, tls.listen(0)).listen(site)


def _config(tmp_path, port: int, ca=None):
    values = {"url": f"https://127.0.0.1:{port}/message-system", "data_path": str(tmp_path / "data"),
              "computer_title": "box1"}
    if ca is not None:
        values["ssl_public_key"] = str(ca)
    (tmp_path / "data").mkdir(exist_ok=True)
    return make_config(values)


async def _post_error(http, url) -> BaseException | None:
    from twisted.internet import reactor

    try:
        response = await http.post(url, data=b"x", timeout=10, reactor=reactor)
        await response.content()
    except Exception as e:
        return e
    return None


@pytest_twisted.ensureDeferred
async def test_the_ca_file_is_trusted_and_nothing_else(tls, tmp_path):
    from twisted.internet import reactor

    port = await _listen(tls)
    try:
        number = port.getHost().port
        url = f"https://127.0.0.1:{number}/message-system"
        good = make_http_client(reactor, _config(tmp_path, number, tls.ca))
        response = await good.post(url, data=b"x", timeout=10, reactor=reactor)
        assert (response.code, await response.content()) == (200, b"hello over tls")

        other_ca, _key, _cert = make_ca(tmp_path / "other", "other")
        for ca in (other_ca, None):  # a wrong CA, and the system's roots
            error = await _post_error(make_http_client(reactor, _config(tmp_path, number, ca)), url)
            assert error is not None, f"the certificate was accepted with CA {ca}"
            assert describe_http_error(error) == (
                "the server's TLS certificate could not be verified (certificate verify failed); "
                "set ssl_public_key to the file of the CA that signed it")
        await good._agent._pool.closeCachedConnections()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_host_is_refused(tmp_path):
    from twisted.internet import reactor

    tls = make_server_tls(tmp_path / "tls", hosts=("ridgeline.example",))
    port = await _listen(tls)
    try:
        number = port.getHost().port
        http = make_http_client(reactor, _config(tmp_path, number, tls.ca))
        error = await _post_error(http, f"https://127.0.0.1:{number}/message-system")
        assert error is not None
        assert describe_http_error(error) == "the server's TLS certificate does not name the host in the URL"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_refused_certificate_is_one_plain_log_line_per_attempt(tls, tmp_path):
    from twisted.internet import reactor

    port = await _listen(tls)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        config = _config(tmp_path, port.getHost().port, make_ca(tmp_path / "other", "other")[0])
        agent = build_agent(config, reactor=reactor, http=make_http_client(reactor, config), plugins=None)
        agent.log = Logger(namespace="ridgeline.agent", observer=events.append)
        # Not started: each exchange is one attempt and schedules nothing.
        assert await agent.exchange() is False
        assert await agent.exchange() is False
        agent.store.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    texts = [formatEvent(e) for e in events]
    failures = [t for t in texts if t.startswith("Message exchange failed")]
    assert len(failures) == 2, texts
    for text in failures:
        assert "certificate could not be verified" in text and "ssl_public_key" in text, text
        assert "Failure" not in text and "<" not in text, text
    assert not [t for t in texts if "Starting factory" in t or "Stopping factory" in t], texts
    assert agent.store is not None and agent.failures == 2
