"""The shared service fixtures give each test its own database and vhost."""

import pytest


@pytest.mark.postgres
def test_postgres_url_is_a_fresh_empty_database(postgres_url):
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            name = conn.execute(sa.text("select current_database()")).scalar_one()
            tables = conn.execute(
                sa.text("select count(*) from information_schema.tables where table_schema = 'public'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert name.startswith("ridgeline_test_")
    assert tables == 0


@pytest.mark.amqp
def test_amqp_url_accepts_a_durable_queue(amqp_url, amqp_queue_name):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.queue_declare(amqp_queue_name, durable=True)
        channel.basic_publish("", amqp_queue_name, b"hello")
        method, _props, body = channel.basic_get(amqp_queue_name, auto_ack=True)
        assert body == b"hello"
        channel.queue_delete(amqp_queue_name)
    finally:
        conn.close()


def test_make_distribution_exposes_entry_points(make_distribution):
    from importlib.metadata import entry_points

    make_distribution(
        "ridgeline-fixture-probe",
        files={"fixture_probe_pkg/__init__.py": "VALUE = 42\n"},
        entry_points={"ridgeline.test-probe": {"probe": "fixture_probe_pkg:VALUE"}},
    )
    (ep,) = entry_points(group="ridgeline.test-probe")
    assert ep.load() == 42
