"""Alembic migrations build exactly ``server.db.tables.metadata``."""

import sqlalchemy as sa
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from server.db import migrate
from server.db.base import create_engine
from server.db.tables import metadata


@pytest.fixture
def engine(database_url):
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def diffs(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": migrate.server_default_comparison(engine.dialect.name)}
        )
        return compare_metadata(ctx, metadata)


def test_empty_database_differs_from_metadata(engine):
    # The comparison below would be meaningless if it could not see a difference.
    assert diffs(engine)
    assert migrate.status(engine).current is None


def test_migrated_schema_equals_metadata(engine):
    status = migrate.upgrade(engine)
    assert status.is_current and status.current == migrate.head_revision()
    assert diffs(engine) == []


def test_upgrade_is_idempotent(engine):
    migrate.upgrade(engine)
    assert migrate.upgrade(engine).is_current
    assert diffs(engine) == []


def test_comparison_sees_a_changed_schema(engine):
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
    assert any(d[0] == "remove_table" and d[1].name == "stray" for d in diffs(engine))


def test_sqlite_ids_are_never_reused(sqlite_url):
    engine = create_engine(sqlite_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        sql = dict(conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
    for table in ("computers", "activities", "activity_history", "outbox", "api_keys", "attachments", "job_queue"):
        assert "AUTOINCREMENT" in sql[table], table
    engine.dispose()


def test_require_current_names_db_upgrade(engine):
    with pytest.raises(migrate.SchemaNotCurrent, match="ridgeline db upgrade"):
        migrate.require_current(engine)
    migrate.upgrade(engine)
    assert migrate.require_current(engine).is_current


def test_old_schema_is_refused_with_a_clear_message(engine):
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(migrate.SchemaNotCurrent, match="does not know"):
        migrate.require_current(engine)


def test_downgrade_to_empty_and_back(engine):
    migrate.upgrade(engine)
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert diffs(engine) == []
