"""Installation-wide settings (table ``server_settings``): the server uuid, ...

Values are written once and never change afterwards; ``get_or_create`` is safe
when several processes start at once (insert-if-absent, then read back).
"""

from __future__ import annotations

import uuid
from typing import Callable

import sqlalchemy as sa

from server.db.tables import server_settings

SERVER_UUID = "server_uuid"


class SettingsConnector:
    """Named text values of the installation, one row each."""

    def __init__(self, db):
        self.db = db

    def get(self, name: str):
        """Deferred of the value, or None when it was never set."""
        return self.db.run(self.get_thd, name)

    def get_thd(self, conn: sa.Connection, name: str) -> str | None:
        return conn.execute(sa.select(server_settings.c.value).where(server_settings.c.name == name)).scalar()

    def get_or_create(self, name: str, make: Callable[[], str]):
        """Deferred of the stored value; stores ``make()`` first if there is none."""
        return self.db.run(self.get_or_create_thd, name, make)

    def get_or_create_thd(self, conn: sa.Connection, name: str, make: Callable[[], str]) -> str:
        value = self.get_thd(conn, name)
        if value is not None:
            return value
        # ON CONFLICT DO NOTHING: a concurrent first start wins without an error
        # that would abort this transaction (PostgreSQL); then read the winner.
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(server_settings).values(name=name, value=make()).on_conflict_do_nothing())
        return self.get_thd(conn, name)

    def server_uuid(self):
        """Deferred of this installation's uuid (text), generated on first use."""
        return self.get_or_create(SERVER_UUID, lambda: str(uuid.uuid4()))

    def server_uuid_thd(self, conn: sa.Connection) -> str:
        return self.get_or_create_thd(conn, SERVER_UUID, lambda: str(uuid.uuid4()))
