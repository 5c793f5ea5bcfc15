"""The server's composition root: builds every object of a ``ridgeline server``
process and runs it.

``prepare_database`` (synchronous, before the reactor runs) creates the data
directory, connects, and migrates the schema or checks it is current.
``build`` makes the thread pool, the ``Database``, the ``ServerContext``, the web
site and the listening endpoint, and returns one ``MultiService``. ``run`` does
both and runs the reactor until SIGTERM/SIGINT.

Optional parts started when present (so the server runs before they exist):
``server.jobhandler.make_service(context) -> IService`` (in-process job-handler,
unless ``--no-job-handler``) and ``server.scheduler.make_service(context) ->
IService``; see ``server.web`` for the HTTP mount points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from server import web
from server.config import ConfigError, ServerConfig, ensure_data_dir
from server.context import ServerContext
from server.db import attach_components, inline_runner
from server.db import migrate as migrations
from server.db.base import Database, ThreadPoolRunner, create_engine

log = Logger(namespace="ridgeline.server")


class StartupError(Exception):
    """The server cannot start; the message says why and what to do, on one line."""


class MissingDatabase(Exception):
    """A read-only command names a SQLite file that does not exist; the message
    says where and what creates it."""


def open_database_engine(config: ServerConfig, *, create: bool = True) -> sa.Engine:
    """Engine for the configured database.

    With ``create`` (commands that write), the data directory for the default
    SQLite file is made, and SQLite makes the file on first use. Without it
    (read-only commands) nothing is created: a SQLite file that is not there
    raises ``MissingDatabase``.
    """
    if not create:
        path = _sqlite_file(config.effective_database_url)
        if path is not None and not path.exists():
            raise MissingDatabase(f"no database at {path}; `ridgeline db upgrade` creates it")
    elif config.uses_default_database:
        ensure_data_dir(config)
    return create_engine(config.effective_database_url)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases, memory and ``file:`` URIs."""
    parsed = sa.engine.make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def prepare_database(config: ServerConfig, engine: sa.Engine, *, migrate: bool | None = None) -> str:
    """Migrate (or, with ``migrate=False``, check) the schema; return the server uuid.

    Raises ``StartupError`` when the database cannot be used or, without
    migration, its schema is not current.
    """
    migrate = config.migrate if migrate is None else migrate
    try:
        if migrate:
            before = migrations.current_revision(engine)
            after = migrations.upgrade(engine)
            if before != after.current:
                log.info("database schema upgraded from {before} to {after}", before=before or "(empty)",
                         after=after.current)
        else:
            migrations.require_current(engine)
        bootstrap = attach_components(Database(engine, inline_runner))
        return bootstrap.run_sync(bootstrap.settings.server_uuid_thd)
    except migrations.SchemaNotCurrent as e:
        raise StartupError(str(e)) from None
    except sa.exc.SQLAlchemyError as e:
        raise StartupError(f"cannot use the database {config.database_url_display}: {database_error(e)}") from None


def database_error(e: sa.exc.SQLAlchemyError) -> str:
    """One line describing a database failure, without SQLAlchemy's boilerplate."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class SequentialMultiService(service.MultiService):
    """Stops its children one after the other, last added first, each once the
    previous one has finished stopping: the job-handler records the outcomes of
    its last jobs before the queue closes and the database thread pool stops."""

    def stopService(self):
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=child)


class ThreadPoolService(service.Service):
    """Starts the database thread pool with the process and stops it last."""

    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        # Joins the threads: database work under way finishes first.
        self.pool.stop()


class ListenService(service.Service):
    """Listens on a Twisted endpoint; reports the bound port (log, port file)."""

    def __init__(self, reactor, description: str, factory, port_file: Path | None, on_failure):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port_file = port_file
        self.on_failure = on_failure
        self.port = None

    def startService(self):
        super().startService()
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except (ValueError, TypeError, KeyError) as e:
            self.on_failure(f"bad --listen endpoint {self.description!r}: {e}")
            return
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._listening, lambda f: self.on_failure(
            f"cannot listen on {self.description}: {f.getErrorMessage()}"))

    def _listening(self, port) -> None:
        self.port = port
        host = port.getHost()
        number = getattr(host, "port", None)
        log.info("listening on {endpoint} (bound port {port})", endpoint=self.description,
                 port=number if number is not None else host)
        if self.port_file is not None and number is not None:
            tmp = self.port_file.with_name(self.port_file.name + ".tmp")
            try:
                tmp.write_text(f"{number}\n")
                os.replace(tmp, self.port_file)  # readers never see a half-written file
            except OSError as e:
                # Whoever waits for the file would wait forever: stop instead.
                self.on_failure(f"port_file: cannot write {self.port_file}: {e.strerror}")

    def stopService(self):
        super().stopService()
        if self.port_file is not None and self.port is not None:
            self.port_file.unlink(missing_ok=True)
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None


def check_listening_config(reactor, config: ServerConfig) -> None:
    """Refuse, as a ``ConfigError``, a ``listen`` endpoint that does not parse
    (or whose TLS files cannot be read) and a ``port_file`` in a missing
    directory -- before the database is opened or migrated."""
    try:
        serverFromString(reactor, config.listen)
    except Exception as e:  # ValueError, KeyError, OSError, SSL errors: all a bad setting
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ConfigError(f"listen: bad endpoint {config.listen!r}: {detail}") from None
    if config.port_file is not None and not config.port_file.parent.is_dir():
        raise ConfigError(f"port_file: no directory {config.port_file.parent} to write {config.port_file.name} in")


def _optional_service(module_name: str, context: ServerContext) -> service.IService | None:
    make = web.optional_factory(module_name, "make_service", log=log, absent="not started")
    return None if make is None else make(context)


def build(reactor, config: ServerConfig, engine: sa.Engine, server_uuid: str, on_failure) -> tuple[service.MultiService, ServerContext]:
    """Every object of the running server, wired; nothing started yet."""
    top = SequentialMultiService()
    pool = ThreadPool(minthreads=1, maxthreads=config.database_threads, name="ridgeline-db")
    ThreadPoolService(pool).setServiceParent(top)  # first in, last out
    db = attach_components(Database(engine, ThreadPoolRunner(reactor, pool)))
    from server.plugins import ActivityTypes

    # Built-in types plus those of installed plugin packages (entry points).
    plugins = ActivityTypes.from_plugins()
    # The queue of server activities and its unpublished sweep (before the
    # job-handler: started first, stopped last).
    from server.queue import make_publisher
    from server.queue.publisher import QueueService

    publisher = make_publisher(config, reactor=reactor, db=db, types=plugins)
    QueueService(publisher).setServiceParent(top)
    context = ServerContext(reactor=reactor, db=db, config=config, plugins=plugins, server_uuid=server_uuid, log=log,
                            queue=publisher)
    if config.job_handler:
        jobs = _optional_service("server.jobhandler", context)
        if jobs is not None:
            jobs.setServiceParent(top)
    scheduler = _optional_service("server.scheduler", context)
    if scheduler is not None:
        scheduler.setServiceParent(top)
    site = web.make_site(web.build_root(context), config.max_body_size)
    ListenService(reactor, config.listen, site, config.port_file, on_failure).setServiceParent(top)
    return top, context


def run(config: ServerConfig, reactor: Any = None) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit code."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        engine = open_database_engine(config)
        server_uuid = prepare_database(config, engine)
    except (StartupError, ConfigError) as e:
        log.critical("cannot start: {error}", error=str(e))
        return 1
    exit_code = [0]

    def on_failure(message: str) -> None:
        log.critical("cannot start: {error}", error=message)
        exit_code[0] = 1
        if reactor.running:
            reactor.stop()

    try:
        top, _context = build(reactor, config, engine, server_uuid, on_failure)
    except Exception:
        log.failure("cannot start: building the server failed")
        engine.dispose()
        return 1
    log.info("Ridgeline server {uuid} starting; database {db}", uuid=server_uuid, db=config.database_url_display)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    engine.dispose()
    log.info("Ridgeline server stopped")
    return exit_code[0]
