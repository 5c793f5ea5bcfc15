"""Schema migrations, driven from code (no ``alembic.ini`` at run time).

``upgrade(engine)`` brings a database to the newest revision; ``status(engine)``
says where it stands; ``require_current(engine)`` raises ``SchemaNotCurrent`` with
a message naming ``ridgeline db upgrade`` when it is behind. The revisions live
in ``server/migrations/versions`` and build exactly ``server.db.tables.metadata``
(a test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic import command

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Arbitrary constant: the PostgreSQL advisory lock that keeps two processes
# starting at once from both running the same migration.
_PG_LOCK_ID = 0x52494447  # "RIDG"


class SchemaNotCurrent(Exception):
    """The database schema is older (or newer) than this code; the message says what to do."""


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None  # None: empty database, no Ridgeline schema
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def compare_server_default(context, inspected_column, metadata_column, inspected_default,
                           metadata_default, rendered_metadata_default):
    """Alembic's server-default comparison, minus two SQLite reflection artefacts.

    SQLite has no identity columns (ids come from AUTOINCREMENT, a table option)
    and reflects ``DEFAULT ''`` as the quoted text ``"''"``. Returns False for
    "same", None to let Alembic decide.
    """
    if context.dialect.name != "sqlite":
        return None
    if isinstance(metadata_column.server_default, sa.Identity):
        return False
    if inspected_default is not None and rendered_metadata_default is not None:
        if _unquote(inspected_default) == _unquote(rendered_metadata_default):
            return False
    return None


def server_default_comparison(dialect_name: str):
    """What to pass Alembic as ``compare_server_default`` on this dialect.

    PostgreSQL reflects defaults faithfully (and Alembic's callable hook cannot
    handle its identity columns), so it gets plain ``True``.
    """
    return compare_server_default if dialect_name == "sqlite" else True


def _unquote(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and (text[0] + text[-1]) in ("''", '""', "()"):
        text = text[1:-1].strip()
    return text


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration revisions are installed"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def status(engine: sa.Engine) -> SchemaStatus:
    return SchemaStatus(current=current_revision(engine), head=head_revision())


def upgrade(engine: sa.Engine, revision: str = "head") -> SchemaStatus:
    """Upgrade the schema to ``revision`` (default the newest) in one transaction."""
    if engine.dialect.name == "sqlite":
        _upgrade_sqlite(engine, revision)
    else:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            command.upgrade(alembic_config(conn), revision)
    return status(engine)


def _upgrade_sqlite(engine: sa.Engine, revision: str) -> None:
    # Batch migrations rebuild tables (create copy, drop old, rename). With
    # foreign keys enforced, dropping a parent table would cascade into its
    # children, so they are off during the migration and checked afterwards.
    # The pragma is ignored inside a transaction: set it on the raw connection
    # before SQLAlchemy begins one.
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                command.upgrade(alembic_config(conn), revision)
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise RuntimeError(f"migration left broken foreign keys: {problems[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def require_current(engine: sa.Engine) -> SchemaStatus:
    """Raise ``SchemaNotCurrent`` unless the schema is at the newest revision."""
    st = status(engine)
    if st.is_current:
        return st
    if st.current is None:
        raise SchemaNotCurrent(
            "the database has no Ridgeline schema yet; run `ridgeline db upgrade` "
            "(or start the server without --no-migrate)"
        )
    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revision(st.current)
    except Exception:
        raise SchemaNotCurrent(
            f"the database schema is at revision {st.current}, which this version of "
            "Ridgeline does not know (is a newer version using it?)"
        ) from None
    raise SchemaNotCurrent(
        f"the database schema is at revision {st.current}, older than {st.head}; "
        "run `ridgeline db upgrade` (or start the server without --no-migrate)"
    )
