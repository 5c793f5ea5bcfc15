"""Fan-out: one ``POST /api/v1/activities`` of ``execute-script`` for 10,000
computers, through the real REST resource (``treq.testing.StubTreq``, inline
database runner) on a SQLite file.

Seeding (not timed): N accepted computers through
``ComputersConnector.create_many_thd``, all tagged ``fleet``. Then, timed, one
request by ``computer_ids`` and one by ``computer_tags`` (each creates a parent
and N children with their history rows). Prints seconds per request; the goal is
at most 2 s each on this machine class.

Usage: python bench/fanout_bench.py [--computers N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.task import Clock

from server import web
from server.config import ServerConfig
from server.context import ServerContext
from server.db import connect, inline_runner, migrate
from server.db.computers import NewComputer
from plugins import execute_script_type
from server.plugins import ActivityTypes

GOAL = 2.0


def fired(d):
    box = []
    d.addBoth(box.append)
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computers", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of each request")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        db = connect(f"sqlite:///{Path(tmp) / 'bench.sqlite'}", inline_runner)
        migrate.upgrade(db.engine)
        clock = Clock()
        clock.advance(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp())
        now = dt.datetime.fromtimestamp(clock.seconds(), tz=dt.timezone.utc)
        context = ServerContext(reactor=clock, db=db, config=ServerConfig(),
                                plugins=ActivityTypes.from_plugins([execute_script_type], load_entry_points=False))
        key = fired(db.apikeys.create("bench", now))[1]
        news = [NewComputer(title=f"c{i}", hostname=f"host{i}", account_name="standalone",
                            secure_id=f"secure-{i}".encode(), accepted=True, tags=("fleet",))
                for i in range(args.computers)]
        ids = db.run_sync(db.computers.create_many_thd, news, now)
        treq = StubTreq(web.build_root(context))
        params = {"code": "#!/bin/sh\nuname -a\n", "username": "nobody", "time_limit": 60}
        requests = {
            "computer_ids": {"type": "execute-script", "parameters": params, "computer_ids": ids},
            "computer_tags": {"type": "execute-script", "parameters": params, "computer_tags": ["fleet"]},
        }
        worst = 0.0
        for label, body in requests.items():
            data = json.dumps(body).encode()
            profiler = cProfile.Profile() if args.profile else None
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            d = treq.post("http://bench/api/v1/activities", data=data,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            treq.flush()
            response = fired(d)
            content = fired(response.content())
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - start
            reply = json.loads(content)
            if response.code != 201 or reply.get("children_count") != args.computers:
                print(f"unexpected reply {response.code}: {content[:300]!r}", file=sys.stderr)
                return 1
            worst = max(worst, elapsed)
            print(f"fan-out by {label}: {args.computers} computers, 1 request: {elapsed:.3f} s "
                  f"({args.computers / elapsed:,.0f} activities/s)")
            if profiler:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        db.close()
    print(f"worst {worst:.3f} s; goal <= {GOAL:.1f} s: {'met' if worst <= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
