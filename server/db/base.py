"""Database plumbing: engines, the runner, and the ``Database`` that holds the
connector components.

Every public connector method returns a Deferred. It wraps a synchronous
function taking a SQLAlchemy ``Connection`` (by convention named ``*_thd`` or
defined inline as ``thd``), run inside one transaction through an injected
*runner*: a dedicated thread pool in production (``ThreadPoolRunner``), or
``inline_runner`` in synchronous tests, where the Deferred has already fired when
the method returns. Connectors return dataclasses, never rows.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

import sqlalchemy as sa
from twisted.internet import defer, threads

T = TypeVar("T")


class Runner(Protocol):
    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred: ...


def inline_runner(fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred:
    """Run ``fn`` now, in this thread; for synchronous tests and tools."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class ThreadPoolRunner:
    """Run functions on a dedicated thread pool (never the reactor's default one)."""

    def __init__(self, reactor, threadpool):
        self._reactor = reactor
        self._pool = threadpool

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine with Ridgeline's connection settings.

    SQLite: WAL journal, foreign keys on, a busy timeout, and ``BEGIN IMMEDIATE``
    for every transaction, so two writers (the server and a job-handler process)
    wait for each other instead of failing when a read turns into a write.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
            **kwargs,
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


class Database:
    """The database of one server process: an engine, a runner and the connectors.

    ``db.run(fn, *args)`` runs ``fn(conn, *args)`` in one transaction through the
    runner and returns a Deferred of its result. Connector components are
    attached by ``server.db.connect`` (one per table family).
    """

    def __init__(self, engine: sa.Engine, runner: Runner):
        self.engine = engine
        self.runner = runner

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred:
        return self.runner(self.run_sync, fn, *args, **kwargs)

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, ...)`` in one transaction in this thread."""
        with self.engine.begin() as conn:
            return fn(conn, *args, **kwargs)

    def close(self) -> None:
        self.engine.dispose()
