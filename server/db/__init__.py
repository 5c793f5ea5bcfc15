"""The server's database layer: ``connect(url, runner)`` builds a ``Database``
with one connector component per table family attached as an attribute.

To add a component: write ``server/db/<family>.py`` with a class taking the
``Database`` (``Connector(db)``), and add one line to ``COMPONENTS`` below. Call
sites then use ``db.<attribute>.<method>(...)``, each method a Deferred.
"""

from __future__ import annotations

from typing import Callable

from server.db.base import Database, Runner, create_engine, inline_runner  # noqa: F401


def _components() -> dict[str, Callable[[Database], object]]:
    # Imported here so that ``import server.db.base`` stays light for tools.
    from server.db.activities import ActivitiesConnector
    from server.db.apikeys import ApiKeysConnector
    from server.db.attachments import AttachmentsConnector
    from server.db.computers import ComputersConnector
    from server.db.exchangestate import ExchangeStateConnector
    from server.db.outbox import OutboxConnector
    from server.db.joboutputs import JobOutputsConnector
    from server.db.settings import SettingsConnector

    # attribute on Database -> component class. Keep this list obvious.
    return {
        "settings": SettingsConnector,
        "apikeys": ApiKeysConnector,
        "computers": ComputersConnector,
        "activities": ActivitiesConnector,
        "outbox": OutboxConnector,
        "exchange": ExchangeStateConnector,
        "joboutputs": JobOutputsConnector,
        "attachments": AttachmentsConnector,
    }


def attach_components(db: Database) -> Database:
    """Attach every connector component to ``db`` (idempotent per attribute)."""
    for name, component in _components().items():
        setattr(db, name, component(db))
    return db


def connect(url: str, runner: Runner, **engine_kwargs) -> Database:
    """A ``Database`` on ``url`` running its work through ``runner``, with every
    connector component attached. The schema is not touched (see ``server.db.migrate``)."""
    return attach_components(Database(create_engine(url, **engine_kwargs), runner))
