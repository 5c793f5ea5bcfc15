"""``ridgeline job-handler``: a separate process that runs server activities.

    ridgeline job-handler [--config FILE] --database URL --queue URL [--concurrency N]

Any number may run against one database and queue. The database schema must be
current (``ridgeline db upgrade``; the server migrates at start). SIGTERM stops
claiming, gives running jobs ``job_grace`` seconds, and exits 0; what could not
finish is ended by the lease rule.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from server import config

log = Logger(namespace="ridgeline.jobhandler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_service_options(parser, config.JOB_HANDLER_OPTIONS)


def run(args: argparse.Namespace) -> int:
    return config.run_service("job-handler", args, run_job_handler)


def build(reactor, cfg: config.ServerConfig, engine, server_uuid: str, *, name: str | None = None,
          amqp_queue_name: str | None = None):
    """The job-handler process's services (thread pool, queue, handler), wired."""
    from server.context import ServerContext
    from server.db import attach_components
    from server.db.base import Database, ThreadPoolRunner
    from server.jobhandler.runner import JobHandler, handler_name
    from server.plugins import ActivityTypes
    from server.queue import make_publisher
    from server.queue.publisher import QueueService
    from server.service import SequentialMultiService, ThreadPoolService

    name = name or handler_name()
    top = SequentialMultiService()
    pool = ThreadPool(minthreads=1, maxthreads=cfg.database_threads, name="ridgeline-db")
    ThreadPoolService(pool).setServiceParent(top)
    db = attach_components(Database(engine, ThreadPoolRunner(reactor, pool)))
    types = ActivityTypes.from_plugins()
    publisher = make_publisher(cfg, reactor=reactor, db=db, types=types, consumer_name=name,
                               amqp_queue_name=amqp_queue_name)
    QueueService(publisher, sweep_interval=None).setServiceParent(top)
    context = ServerContext(reactor=reactor, db=db, config=cfg, plugins=types, server_uuid=server_uuid, log=log,
                            queue=publisher)
    handler = JobHandler(context, name=name)
    handler.setServiceParent(top)
    return top, handler


def run_job_handler(cfg: config.ServerConfig, reactor: Any = None) -> int:
    if reactor is None:
        from twisted.internet import reactor
    from server.plugins import PluginError
    from server.service import StartupError, open_database_engine, prepare_database

    try:
        engine = open_database_engine(cfg)
        server_uuid = prepare_database(cfg, engine, migrate=False)
    except (StartupError, config.ConfigError) as e:
        log.critical("cannot start: {error}", error=str(e))
        return 1
    try:
        top, handler = build(reactor, cfg, engine, server_uuid)
    except PluginError as e:
        log.critical("cannot start: {error}", error=str(e))
        engine.dispose()
        return 1
    log.info("job-handler {name} starting; database {db}", name=handler.name, db=cfg.database_url_display)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    engine.dispose()
    log.info("job-handler {name} stopped", name=handler.name)
    return 0
