"""Fixtures shared by the whole suite, defined once here.

Services: PostgreSQL and RabbitMQ are real. Each test that asks for one gets its
own freshly created PostgreSQL database or RabbitMQ vhost and queue names, dropped
afterwards, so parallel runs never collide and nothing is left behind. Without the
service a test skips with the reason, except under ``REQUIRE_SERVICES=1`` (CI),
where it fails.

    RIDGELINE_TEST_POSTGRES_URL  default postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    RIDGELINE_TEST_AMQP_URL      default amqp://guest:guest@127.0.0.1:5672/
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, settings

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def services_required() -> bool:
    return os.environ.get("REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str):
    """Skip the test, or fail it when services are required (CI)."""
    if services_required():
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1, so this is a failure, not a skip)")
    pytest.skip(reason)


# --- SQLite -----------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of a fresh SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'ridgeline.sqlite'}"


# --- PostgreSQL -------------------------------------------------------------------


def _postgres_admin_url() -> str:
    return os.environ.get("RIDGELINE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _psycopg_conninfo(sqlalchemy_url: str) -> str:
    """psycopg wants a plain libpq URL, without SQLAlchemy's ``+driver``."""
    scheme, rest = sqlalchemy_url.split("://", 1)
    return "postgresql://" + rest


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The maintenance URL, after checking that the server answers."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        service_unavailable("psycopg is not installed")
    url = _postgres_admin_url()
    try:
        with psycopg.connect(_psycopg_conninfo(url), connect_timeout=5):
            pass
    except Exception as e:
        service_unavailable(f"PostgreSQL is not reachable at {url}: {e}")
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str):
    """A SQLAlchemy URL of a new, empty PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"ridgeline_test_{uuid.uuid4().hex[:16]}"
    admin = _psycopg_conninfo(postgres_admin_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres_admin_url)
    yield urlunsplit(parts._replace(path="/" + name))
    with psycopg.connect(admin, autocommit=True) as conn:
        # WITH (FORCE) ends connections a failed test may have leaked.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """Runs the test once on a fresh SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


# --- RabbitMQ ---------------------------------------------------------------------


def _amqp_base_url() -> str:
    return os.environ.get("RIDGELINE_TEST_AMQP_URL", DEFAULT_AMQP_URL)


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    done = subprocess.run([ctl, "-q", *args], capture_output=True, timeout=60)
    return done.returncode == 0


@pytest.fixture(scope="session")
def amqp_url():
    """An AMQP URL on a vhost of this test run's own, deleted at the end.

    When ``rabbitmqctl`` cannot be used (a broker on another host), the URL of
    ``RIDGELINE_TEST_AMQP_URL`` is used as it is and tests keep apart through
    ``amqp_queue_name``.
    """
    try:
        import pika
    except ImportError:  # pragma: no cover - pika is a dependency
        service_unavailable("pika is not installed")
    base = _amqp_base_url()
    try:
        conn = pika.BlockingConnection(
            pika.URLParameters(base + ("&" if "?" in base else "?") + "socket_timeout=5&blocked_connection_timeout=5")
        )
        conn.close()
    except Exception as e:
        service_unavailable(f"RabbitMQ is not reachable at {base}: {e!r}")
    vhost = f"ridgeline-test-{uuid.uuid4().hex[:12]}"
    parts = urlsplit(base)
    user = parts.username or "guest"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        _rabbitmqctl("delete_vhost", vhost)
    else:
        yield base


@pytest.fixture
def amqp_queue_name() -> str:
    """A queue name no other test (or run) uses."""
    return f"ridgeline-test-{uuid.uuid4().hex[:12]}"


# --- third-party plugin packages ----------------------------------------------------


@pytest.fixture
def make_distribution(tmp_path: Path, monkeypatch):
    """Build a tiny installed-looking distribution in a temporary directory.

    ``make_distribution(name, files={"pkg/__init__.py": "..."}, entry_points={group:
    {ep_name: "module:attr"}})`` writes the files and a ``.dist-info`` with the entry
    points, puts the directory on ``sys.path`` and returns it. Nothing is installed
    into the virtual environment.
    """
    import importlib
    import importlib.metadata

    made: list[str] = []

    def make(name: str, files: dict[str, str], entry_points: dict[str, dict[str, str]], version: str = "1.0"):
        root = tmp_path / f"dist-{name}"
        root.mkdir()
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines.extend(f"{k} = {v}" for k, v in eps.items())
            lines.append("")
        (info / "entry_points.txt").write_text("\n".join(lines))
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        made.extend(p.split("/")[0].removesuffix(".py") for p in files)
        return root

    yield make
    for mod in list(sys.modules):
        if mod.split(".")[0] in made:
            del sys.modules[mod]


# --- the server's database ----------------------------------------------------------


@pytest.fixture
def make_server_db():
    """``make_server_db(url)``: a ``server.db.base.Database`` on a fresh schema with
    the inline runner (its Deferreds have fired when a method returns)."""
    made = []

    def make(url: str):
        from server.db.base import Database, create_engine, inline_runner
        from server.db.tables import metadata

        engine = create_engine(url)
        metadata.create_all(engine)
        db = Database(engine, inline_runner)
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()


@pytest.fixture
def server_db(make_server_db, database_url):
    """A server database on SQLite and again on PostgreSQL."""
    return make_server_db(database_url)


@pytest.fixture
def sqlite_server_db(make_server_db, sqlite_url):
    """A server database on SQLite only."""
    return make_server_db(sqlite_url)


def result_of(deferred):
    """The result of a Deferred that has already fired (inline runner); raises its failure."""
    from twisted.python.failure import Failure

    results: list = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    outcome = results[0]
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


@pytest.fixture
def fired():
    """``fired(d)``: the result of an already-fired Deferred, or its exception raised."""
    return result_of
