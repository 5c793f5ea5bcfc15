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


def make_http_client(reactor, config: AgentConfig):
    """A treq client over a persistent connection pool; https verifies against the
    ``ssl_public_key`` CA file when one is given (else the system's roots)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    if config.ssl_public_key:
        from twisted.internet.ssl import Certificate

        with open(config.ssl_public_key, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        policy = BrowserLikePolicyForHTTPS(trustRoot=ca)
    else:
        policy = BrowserLikePolicyForHTTPS()
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


def run(config: AgentConfig) -> int:
    """Run the agent in the foreground with the real reactor until it is stopped.

    SIGTERM and SIGINT stop it cleanly; SIGHUP reopens the log file.
    """
    from twisted.internet import reactor

    logs = LogSetup(config.log_dir, config.log_level)
    logs.start()
    try:
        agent = build_agent(config, reactor=reactor, http=make_http_client(reactor, config))
    except Exception as e:  # plugin or store problem at start: one clear line
        print(f"ridgeline agent: {e}", file=sys.stderr)
        return 1
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
