"""Server activities through the queue: how many no-op jobs per second.

    .venv/bin/python bench/jobs_bench.py [--count 5000] [--handlers 2] [--concurrency 32]

Two runs:

1. **RabbitMQ + PostgreSQL**: ``--handlers`` real ``ridgeline job-handler``
   processes (default 2) consume from RabbitMQ and record outcomes in a fresh
   PostgreSQL database;
2. **db queue + SQLite**: the same through the ``db`` queue on a SQLite file.

Each run: ``--count`` queued ``bench-noop`` server activities are created first
(not timed); the job-handlers are started and connected (not timed); then the
clock starts, this process publishes them exactly as the server does (publish
with confirms, then mark ``published_at``), and the clock stops when every one
is ``succeeded``. The figure is activities per second over that interval; it
includes publishing, claiming (compare-and-set, history row), running and
recording each outcome.

Services: ``RIDGELINE_BENCH_POSTGRES_URL`` (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres, a database is created and
dropped) and ``RIDGELINE_BENCH_AMQP_URL`` (default amqp://guest:guest@127.0.0.1:5672/;
a vhost of its own when ``rabbitmqctl`` works).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.db import connect, inline_runner, migrate  # noqa: E402
from server.db.activities import NewActivity  # noqa: E402
from server.db.tables import activities  # noqa: E402

PG = os.environ.get("RIDGELINE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("RIDGELINE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
UTC = dt.timezone.utc

PLUGIN = '''
from server.hookspecs import ActivityType, hookimpl

async def noop(job):
    return None

@hookimpl
def ridgeline_activity_types():
    return [ActivityType(name="bench-noop", kind="server", run=noop, parameters_schema={"type": "object"})]
'''


def write_plugin(root: Path) -> None:
    (root / "bench_noop_jobs").mkdir(parents=True)
    (root / "bench_noop_jobs" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "bench_noop_jobs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-noop-jobs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ridgeline.jobs]\nnoop = bench_noop_jobs\n")


def create_activities(db, n: int) -> list[int]:
    now = dt.datetime.now(UTC)

    def thd(conn):
        return [db.activities.create_thd(conn, NewActivity(kind="server", type="bench-noop", parameters={},
                                                           creator="bench"), now).id for _ in range(n)]

    return db.run_sync(thd)


def succeeded(db) -> int:
    return db.run_sync(lambda c: c.execute(sa.select(sa.func.count()).select_from(activities).where(
        activities.c.state == "succeeded")).scalar())


def start_handlers(n: int, env: dict, workdir: Path, concurrency: int) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = open(workdir / f"handler-{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", f"/tmp/jobs-bench-handler-{i}.prof"]
                               if os.environ.get("BENCH_PROFILE") else []),
             "-m", "ridgeline", "job-handler", "--concurrency", str(concurrency)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    return procs


def wait_ready(workdir: Path, n: int, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = sum(marker in (workdir / f"handler-{i}.log").read_text() for i in range(n))
        if ready == n:
            return
        time.sleep(0.05)
    raise SystemExit(f"job-handlers not ready; see {workdir}/handler-*.log")


def stop_handlers(procs) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def run_case(label: str, db_url: str, queue_url: str, count: int, handlers: int, concurrency: int,
             plugin_root: Path, workdir: Path) -> float:
    db = connect(db_url, inline_runner)
    migrate.upgrade(db.engine)
    ids = create_activities(db, count)
    env = {**os.environ, "PYTHONPATH": f"{plugin_root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RIDGELINE_DATABASE_URL": db_url, "RIDGELINE_QUEUE_URL": queue_url, "RIDGELINE_LOG_LEVEL": "info"}
    procs = start_handlers(handlers, env, workdir, concurrency)
    try:
        wait_ready(workdir, handlers, "connected to RabbitMQ" if queue_url != "db" else "started:")
        # The publisher runs in a child process (task.react exits its process).
        out = subprocess.run([sys.executable, __file__, "--publish", db_url, queue_url, str(count)],
                             capture_output=True, text=True, env={**os.environ}, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"publisher failed: {out.stderr.strip()[-2000:]}")
        seconds = float(out.stdout.strip().splitlines()[-1])
        print(f"  ({out.stderr.strip().splitlines()[-1]})")
    finally:
        stop_handlers(procs)
    done = succeeded(db)
    db.close()
    rate = count / seconds
    print(f"{label}: {count} activities in {seconds:.2f}s = {rate:,.0f} activities/s "
          f"({handlers} job-handler process{'es' if handlers > 1 else ''}, concurrency {concurrency}; "
          f"{done} succeeded)")
    return rate


def _publisher_child(db_url: str, queue_url: str, count: int) -> None:
    from twisted.internet import defer, task

    from server.queue import open_queue
    from server.queue.publisher import Publisher

    async def main(reactor):
        pub_db = connect(db_url, inline_runner)
        backend = open_queue(queue_url, reactor=reactor, db=pub_db, consumer_name=f"bench-publisher-{os.getpid()}")
        backend.start()
        publisher = Publisher(reactor=reactor, db=pub_db, queue=backend)
        if queue_url != "db":
            while not backend.connected:
                await task.deferLater(reactor, 0.05, lambda: None)
        started = time.perf_counter()
        published = await publisher.publish_pending()
        if published != count:
            raise RuntimeError(f"published {published} of {count}")
        print(f"published in {time.perf_counter() - started:.2f}s", file=sys.stderr, flush=True)
        while succeeded(pub_db) < count:
            await task.deferLater(reactor, 0.02, lambda: None)
        print(f"{time.perf_counter() - started:.4f}", flush=True)
        await backend.close()
        pub_db.close()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    return subprocess.run([ctl, "-q", *args], capture_output=True, timeout=60).returncode == 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        _publisher_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--handlers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sqlite-handlers", type=int, default=1,
                        help="job-handler processes for the SQLite run (one writer at a time there)")
    args = parser.parse_args()
    import psycopg

    with tempfile.TemporaryDirectory(prefix="ridgeline-jobs-bench-") as tmp:
        tmp = Path(tmp)
        plugin_root = tmp / "plugin"
        write_plugin(plugin_root)

        # 1. RabbitMQ + PostgreSQL.
        name = f"ridgeline_bench_{uuid.uuid4().hex[:10]}"
        admin = "postgresql://" + PG.split("://", 1)[1]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        vhost = f"ridgeline-bench-{uuid.uuid4().hex[:8]}"
        parts = urlsplit(AMQP)
        amqp_url = AMQP
        if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest",
                                                             ".*", ".*", ".*"):
            amqp_url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        else:
            vhost = None
        try:
            pg_url = urlunsplit(urlsplit(PG)._replace(path="/" + name))
            (tmp / "amqp").mkdir()
            run_case("RabbitMQ + PostgreSQL", pg_url, amqp_url, args.count, args.handlers, args.concurrency,
                     plugin_root, tmp / "amqp")
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if vhost:
                _rabbitmqctl("delete_vhost", vhost)

        # 2. db queue + SQLite.
        (tmp / "sqlite").mkdir()
        run_case("db queue + SQLite", f"sqlite:///{tmp / 'bench.sqlite'}", "db", args.count, args.sqlite_handlers,
                 args.concurrency, plugin_root, tmp / "sqlite")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
