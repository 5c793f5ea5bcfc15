"""The agent's composition root: everything is built here, once.

:func:`build_agent` wires an :class:`~agent.exchange.AgentCore` from a config, a
reactor (a ``Clock`` in tests), an HTTP client (a ``StubTreq`` in tests) and the
plugins; :func:`run` does it with the real reactor, real HTTP and logging, and
runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.logger import Logger

from agent.config import AgentConfig
from agent.exchange import AgentCore
from agent.logs import LogSetup
from agent.plugins import AgentPlugins
from agent.store import AgentStore

log = Logger(namespace="ridgeline.agent")


def build_agent(
    config: AgentConfig,
    *,
    reactor: Any,
    http: Any,
    plugins: AgentPlugins | None = None,
    store: AgentStore | None = None,
    random=None,
    hostname: str | None = None,
) -> AgentCore:
    """Build the agent core. Plugins default to the built-in ones plus the
    entry-point ones the config enables; the store to ``data_path``."""
    if plugins is None:
        plugins = AgentPlugins.load(reactor, config.plugins)
    if store is None:
        store = AgentStore.open(config.data_path)
    return AgentCore(
        config=config, reactor=reactor, http=http, store=store, plugins=plugins, random=random, hostname=hostname
    )


def load_ca_certificates(path: str) -> list:
    """Every certificate of a PEM file (a CA, or a bundle/chain as curl's CAINFO
    takes), as Twisted ``Certificate`` objects. Raises ValueError when none."""
    from twisted.internet.ssl import Certificate

    with open(path, "rb") as f:
        text = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in text.split(marker) if b"-----BEGIN CERTIFICATE-----" in b]
    if not blocks:
        raise ValueError(f"{path!r} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(b[b.index(b"-----BEGIN CERTIFICATE-----") :]) for b in blocks]
    except Exception as e:  # OpenSSL's error is a list of tuples: say it plainly
        raise ValueError(f"{path!r} holds a certificate that cannot be read ({e})") from None


def quiet_connection_pool(reactor):
    """A persistent ``HTTPConnectionPool`` whose connection factories do not log
    "Starting factory"/"Stopping factory": while a server is unreachable every
    retry opens a new connection, and the one line the exchange logs per attempt
    is all the log should get."""
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    class QuietPool(HTTPConnectionPool):
        _factory = QuietFactory

    return QuietPool(reactor, persistent=True)


def make_http_client(reactor, config: AgentConfig):
    """A treq client over a persistent connection pool; https verifies against the
    ``ssl_public_key`` CA file when one is given (else the system's roots)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    pool = quiet_connection_pool(reactor)
    pool.maxPersistentPerHost = 2
    if config.ssl_public_key:
        from twisted.internet.ssl import trustRootFromCertificates

        certificates = load_ca_certificates(config.ssl_public_key)
        policy = BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))
    else:
        policy = BrowserLikePolicyForHTTPS()
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


def run(config: AgentConfig) -> int:
    """Run the agent in the foreground with the real reactor until it is stopped.

    SIGTERM and SIGINT stop it cleanly; SIGHUP reopens the log file.
    """
    from twisted.internet import reactor

    from agent.plugins import AgentPlugins, PluginError

    # Each setting that turns out unusable at start is one line naming it, exit
    # status 2, like a bad value in the file.
    def refuse(key: str, problem: object) -> int:
        print(f"ridgeline agent: error: {key}: {problem}", file=sys.stderr)
        return 2

    try:
        logs = LogSetup(config.log_dir, config.log_level)
    except OSError as e:
        return refuse("log_dir", f"cannot write {config.log_dir!r}/agent.log: {e.strerror or e}")
    try:
        plugins = AgentPlugins.load(reactor, config.plugins)
    except PluginError as e:
        return refuse("plugins", str(e).removeprefix("plugins: "))
    try:
        store = AgentStore.open(config.data_path)
    except Exception as e:  # OSError, or SQLite refusing the file
        return refuse("data_path", f"cannot keep the agent's state in {config.data_path!r}: {getattr(e, 'strerror', None) or e}")
    try:
        http = make_http_client(reactor, config)
    except (OSError, ValueError) as e:
        store.close()
        return refuse("ssl_public_key", e)
    logs.start()
    agent = build_agent(config, reactor=reactor, http=http, plugins=plugins, store=store)
    log.info(
        "Ridgeline agent starting: server {url}, data in {data}, plugins: {plugins}",
        url=config.url,
        data=config.data_path,
        plugins=", ".join(agent.plugins.names()) or "none",
    )

    def on_hup(signum, frame):
        reactor.callFromThread(logs.reopen)

    signal.signal(signal.SIGHUP, on_hup)
    reactor.callWhenRunning(agent.start)
    reactor.addSystemEventTrigger("before", "shutdown", agent.stop)
    reactor.run()  # installs SIGTERM/SIGINT handlers that stop the reactor
    agent.store.close()
    log.info("Ridgeline agent stopped")
    return 0
