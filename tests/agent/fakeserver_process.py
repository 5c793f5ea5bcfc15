"""The agent tests' fake server as a process of its own, over http or https.

    python tests/agent/fakeserver_process.py STATE_FILE [KEY CERT]

Listens on a free loopback port (TLS with KEY and CERT when given) and keeps
STATE_FILE up to date with a JSON object: ``port``, ``computers`` (titles of
registered computers), ``exchanges`` and ``pings``. Runs until terminated.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(state_file: str, key: str | None = None, cert: str | None = None) -> None:
    from twisted.internet import endpoints, reactor, task
    from twisted.web.server import Site

    from agent_fakeserver import FakeServer

    fake = FakeServer()
    site = Site(fake.resource())
    site.noisy = False
    if key:
        spec = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    else:
        spec = "tcp:0:interface=127.0.0.1"
    state = {"port": None}

    def write() -> None:
        state.update(computers=sorted(c.title for c in fake.computers.values()),
                     exchanges=len(fake.requests), pings=len(fake.pings))
        tmp = state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, state_file)

    def listening(port) -> None:
        state["port"] = port.getHost().port
        write()
        task.LoopingCall(write).start(0.2)

    endpoints.serverFromString(reactor, spec).listen(site).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
