"""Idle message exchanges: Ridgeline's server against a bare twisted.web resource.

Two servers, each in its own process, one after the other:

- **bare**: a twisted.web resource that reads the body, decodes it with
  ``protocol.bpickle`` and returns one fixed bpickled reply: the floor of
  HTTP + bpickle in Python, with no work at all;
- **ridgeline**: the real site (``server.web.make_site(build_root(context))``)
  with its thread-pool database runner on a SQLite file holding N registered,
  accepted computers with nothing to do.

The same load generator drives both: a separate process running a Twisted
client (this file, ``--load``) that simulates many agents over keep-alive
HTTP/1.1 connections, each connection doing back-to-back idle authenticated
exchanges as a landscape-client does (``X-Computer-ID``, the token from the
previous reply, the server's accepted-types digest, both sequence numbers). It
prints exchanges per second and p50/p99 latency; the summary gives the ratio.
Goal: Ridgeline at 50 % or more of the bare rate.

Usage: python bench/exchange_bench.py [--agents 2000] [--connections 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.5
HERE = Path(__file__).resolve()


# --- servers (run in a child process) --------------------------------------------------


def serve(kind: str, db_url: str | None, port_file: Path) -> None:
    from twisted.internet import reactor
    from twisted.web import server
    from twisted.web.resource import Resource

    from protocol import bpickle

    if kind == "bare":
        reply = bpickle.dumps({"server-api": b"3.3", "server-uuid": b"bare", "messages": [],
                               "next-expected-sequence": 0, "next-exchange-token": b"x" * 32})

        class Bare(Resource):
            isLeaf = True

            def render_POST(self, request):
                bpickle.loads(request.content.read())
                request.setHeader(b"content-type", b"application/octet-stream")
                return reply

        root = Resource()
        root.putChild(b"message-system", Bare())
        site = server.Site(root)
        pool = None
    else:
        from twisted.python.threadpool import ThreadPool

        from server import web
        from server.config import ServerConfig
        from server.context import ServerContext
        from server.db import attach_components
        from server.db.base import Database, ThreadPoolRunner, create_engine
        from server.plugins import ActivityTypes

        config = ServerConfig(database_url=db_url)
        pool = ThreadPool(minthreads=1, maxthreads=config.database_threads, name="bench-db")
        pool.start()
        db = attach_components(Database(create_engine(db_url), ThreadPoolRunner(reactor, pool)))
        context = ServerContext(reactor=reactor, db=db, config=config, plugins=ActivityTypes.from_plugins(),
                                server_uuid="bench-uuid")
        site = web.make_site(web.build_root(context), config.max_body_size)
    site.noisy = False
    port = reactor.listenTCP(0, site, backlog=512, interface="127.0.0.1")
    port_file.write_text(str(port.getHost().port))
    if pool is not None:
        reactor.addSystemEventTrigger("before", "shutdown", pool.stop)
    reactor.run()


def seed(db_url: str, agents: int) -> None:
    """N accepted computers with secure ids ``bench-<i>``, their types and API known (idle)."""
    import datetime as dt

    import sqlalchemy as sa

    from protocol import exchange as px
    from server.db import attach_components, inline_runner
    from server.db.base import Database, create_engine
    from server.db.computers import NewComputer
    from server.db.tables import computers, metadata

    engine = create_engine(db_url)
    metadata.create_all(engine)
    db = attach_components(Database(engine, inline_runner))
    now = dt.datetime.now(dt.timezone.utc)
    news = [NewComputer(title=f"agent {i}", hostname=f"h{i}", account_name="standalone",
                        secure_id=f"bench-{i}".encode(), accepted=True) for i in range(agents)]
    types = sorted(["accepted-types", "execute-script", "registration", "resynchronize", "set-id",
                    "set-intervals", "unknown-id"])
    db.run_sync(db.computers.create_many_thd, news, now)
    # As registration leaves them (it stores the client's API), so that their
    # first exchange here is already an idle one.
    db.run_sync(lambda conn: conn.execute(computers.update().values(
        client_accepted_types=";".join(types), client_api=px.CLIENT_API.decode("ascii"),
        client_accepted_types_hash=px.accepted_types_digest(types).hex())))
    db.close()


# --- load generator (run in a child process) ----------------------------------------------


def load(port: int, agents: int, connections: int, seconds: float, warmup: float) -> dict:
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Protocol

    from protocol import bpickle
    from protocol import exchange as px
    from server.messagesystem.exchange import REGISTERED_TYPES

    digest = px.accepted_types_digest(REGISTERED_TYPES)

    class Agent:
        def __init__(self, i):
            self.secure_id = f"bench-{i}".encode()
            self.token = None
            self.server_sequence = 0
            self.sequence = 0

        def request(self) -> bytes:
            body = bpickle.dumps({
                "server-api": b"3.3", "client-api": px.CLIENT_API, "sequence": self.sequence,
                "accepted-types": digest, "messages": [], "total-messages": 0,
                "next-expected-sequence": self.server_sequence,
            })
            head = [b"POST /message-system HTTP/1.1", b"Host: bench", b"X-Message-API: 3.3",
                    b"User-Agent: landscape-client/bench", b"Content-Type: application/octet-stream",
                    b"X-Computer-ID: " + self.secure_id, b"Content-Length: %d" % len(body)]
            if self.token is not None:
                head.append(b"X-Exchange-Token: " + self.token)
            self.token = None
            return b"\r\n".join(head) + b"\r\n\r\n" + body

        def reply(self, body: bytes) -> None:
            r = bpickle.loads(body)
            self.token = r.get("next-exchange-token")
            self.server_sequence += len(r["messages"])
            self.sequence = r.get("next-expected-sequence", self.sequence)

    pool = [Agent(i) for i in range(agents)]
    state = {"next": 0, "latencies": [], "count": 0, "errors": 0, "measuring": False, "start": None}

    class Conn(Protocol):
        def connectionMade(self):
            self.buf = b""
            self.send()

        def send(self):
            self.agent = pool[state["next"] % len(pool)]
            state["next"] += 1
            self.t0 = time.perf_counter()
            self.transport.write(self.agent.request())

        def dataReceived(self, data):
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].split(b"\r\n")
                length = 0
                for line in head[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(self.buf) < end + 4 + length:
                    return
                body = self.buf[end + 4:end + 4 + length]
                self.buf = self.buf[end + 4 + length:]
                status = int(head[0].split()[1])
                if status == 200:
                    self.agent.reply(body)
                else:
                    state["errors"] += 1
                if state["measuring"]:
                    state["latencies"].append(time.perf_counter() - self.t0)
                    state["count"] += 1
                self.send()

    class Factory(ClientFactory):
        protocol = Conn

    for _ in range(connections):
        reactor.connectTCP("127.0.0.1", port, Factory())

    def begin():
        state["measuring"] = True
        state["start"] = time.perf_counter()
        reactor.callLater(seconds, end)

    def end():
        state["measuring"] = False
        state["elapsed"] = time.perf_counter() - state["start"]
        reactor.stop()

    reactor.callLater(warmup, begin)
    reactor.run()
    lat = sorted(state["latencies"])

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"rate": state["count"] / state["elapsed"], "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "count": state["count"], "errors": state["errors"]}


# --- orchestration --------------------------------------------------------------------------


def run_one(kind: str, args, db_url: str | None, tmp: Path) -> dict:
    port_file = tmp / f"{kind}.port"
    cmd = [sys.executable, str(HERE), "--serve", kind, "--port-file", str(port_file)]
    if db_url:
        cmd += ["--db", db_url]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)})
    try:
        deadline = time.time() + 30
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the {kind} server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        out = subprocess.run(
            [sys.executable, str(HERE), "--load", str(port), "--agents", str(args.agents), "--connections",
             str(args.connections), "--seconds", str(args.seconds), "--warmup", str(args.warmup)],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=2000, help="simulated agents (registered computers)")
    p.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per server")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured time first")
    p.add_argument("--serve", choices=["bare", "ridgeline"], help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.db, args.port_file)
        return 0
    if args.load:
        print(json.dumps(load(args.load, args.agents, args.connections, args.seconds, args.warmup)))
        return 0

    with tempfile.TemporaryDirectory(prefix="ridgeline-exchange-bench-") as d:
        tmp = Path(d)
        db_url = f"sqlite:///{tmp / 'bench.sqlite'}"
        seed(db_url, args.agents)
        print(f"load generator: in-repo Twisted client (bench/exchange_bench.py --load), {args.connections} "
              f"keep-alive connections, {args.agents} agents round-robin, {args.seconds:g} s after "
              f"{args.warmup:g} s warm-up; idle authenticated exchanges")
        results = {}
        for kind in ("bare", "ridgeline"):
            r = results[kind] = run_one(kind, args, db_url if kind == "ridgeline" else None, tmp)
            print(f"{kind:>10}: {r['rate']:8.0f} exchanges/s   p50 {r['p50_ms']:6.2f} ms   "
                  f"p99 {r['p99_ms']:6.2f} ms   ({r['count']} exchanges, {r['errors']} errors)")
        ratio = results["ridgeline"]["rate"] / results["bare"]["rate"]
        verdict = "meets" if ratio >= GOAL else "misses"
        print(f"     ratio: {ratio:.0%} of the bare rate ({verdict} the {GOAL:.0%} goal)")
        return 0 if not results["ridgeline"]["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
