"""The number of SQL statements an exchange sends does not grow with the work
it delivers: one locked read and one bulk compare-and-set, whatever the count."""

from __future__ import annotations

import contextlib

import pytest
import sqlalchemy as sa

from server.db.activities import NewActivity

from test_messagesystem_exchange import Env


@contextlib.contextmanager
def counting(engine):
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def _deliver(env, client, how_many: int, others) -> tuple[int, int]:
    """Create ``how_many`` activities for ``client`` (each a child of a group with
    ``others``, so every delivery also moves a parent), exchange once, and return
    (statements sent, activities delivered)."""
    types = env.types
    for i in range(how_many):
        params = types.validate("execute-script", {"code": f"#!/bin/sh\necho {i}\n", "username": "root"})
        env.run(env.db.activities.create_thd, NewActivity(
            kind="client", type="execute-script", parameters=params, creator="alice",
            computer_ids=[client.insecure_id, *others]), env.now)
    with counting(env.db.engine) as statements:
        client.exchange()
    return len(statements), len(client.operations())


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_statements_per_exchange_do_not_grow_with_deliveries(request, make_server_db, database):
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    env = Env(make_server_db(url))
    other = env.client(title="other")
    other.register()
    one, many = env.client(title="one"), env.client(title="many")
    one.register()
    many.register()
    one.exchange()
    many.exchange()
    few_statements, few = _deliver(env, one, 1, [other.insecure_id])
    lots_statements, lots = _deliver(env, many, 12, [other.insecure_id])
    assert (few, lots) == (1, 12)
    assert lots_statements == few_statements, (few_statements, lots_statements)
