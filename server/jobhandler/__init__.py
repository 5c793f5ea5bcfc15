"""Job-handlers: the processes (or the in-process service) that run server
activities. See :mod:`server.jobhandler.runner` for how a job is claimed, run,
canceled and recorded, and :mod:`server.jobhandler.cli` for ``ridgeline
job-handler``.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer

from server.jobhandler.runner import JobHandler, handler_name  # noqa: F401


def make_service(context) -> service.IService | None:
    """The in-process job-handler of ``ridgeline server`` (started by
    ``server.service``): only with the ``db`` queue, where one command should run
    everything; with RabbitMQ, job-handlers are separate processes."""
    if context.queue is None or context.config.queue_url != "db":
        return None
    return JobHandler(context)


def sweep_expired_leases(context, now) -> defer.Deferred:
    """End expired job leases (the scheduler's hook); fires with the number ended."""
    return context.queue.sweep_expired_leases(now)
