"""Alembic environment: runs on the connection ``server.db.migrate`` hands over.

Autogenerate compares against ``server.db.tables.metadata``. SQLite cannot alter
most of a table in place, so migrations render "batch" operations there (copy the
table, swap it in).
"""

from alembic import context

from server.db.migrate import server_default_comparison
from server.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through a misuse
    raise RuntimeError("server.migrations runs through server.db.migrate, which supplies a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    compare_server_default=server_default_comparison(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
