"""API keys: the connector (SQLite and PostgreSQL) and the ``ridgeline api-key`` command."""

import datetime as dt
import hashlib
import subprocess
import sys

import pytest
import sqlalchemy as sa

from server.db import connect, inline_runner, migrate
from server.db.apikeys import ApiKeyError, DuplicateApiKeyName, UnknownApiKey
from server.db.tables import api_keys

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def result(d):
    box = []
    d.addBoth(box.append)
    (value,) = box
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


@pytest.fixture
def db(database_url):
    database = connect(database_url, inline_runner)
    migrate.upgrade(database.engine)
    yield database
    database.close()


def test_create_stores_only_the_hash(db):
    key, secret = result(db.apikeys.create("ci", T0))
    assert key.name == "ci" and key.created_at == T0 and not key.revoked and key.last_used_at is None
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(api_keys)).one()
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in [str(v) for v in stored]


def test_keys_are_random(db):
    _, a = result(db.apikeys.create("a", T0))
    _, b = result(db.apikeys.create("b", T0))
    assert a != b and len(a) >= 40


def test_authenticate(db):
    key, secret = result(db.apikeys.create("ci", T0))
    found = result(db.apikeys.authenticate(secret, T0 + dt.timedelta(seconds=5)))
    assert found.id == key.id and found.last_used_at == T0 + dt.timedelta(seconds=5)
    assert result(db.apikeys.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B"), T0)) is None
    assert result(db.apikeys.authenticate("", T0)) is None
    assert result(db.apikeys.authenticate("x" * 10_000, T0)) is None


def test_last_used_is_refreshed_at_most_every_minute(db):
    _, secret = result(db.apikeys.create("ci", T0))
    result(db.apikeys.authenticate(secret, T0))
    assert result(db.apikeys.authenticate(secret, T0 + dt.timedelta(seconds=30))).last_used_at == T0
    later = T0 + dt.timedelta(seconds=61)
    assert result(db.apikeys.authenticate(secret, later)).last_used_at == later


def test_revoked_key_no_longer_authenticates(db):
    _, secret = result(db.apikeys.create("ci", T0))
    revoked = result(db.apikeys.revoke("ci", T0 + dt.timedelta(hours=1)))
    assert revoked.revoked and revoked.revoked_at == T0 + dt.timedelta(hours=1)
    assert result(db.apikeys.authenticate(secret, T0 + dt.timedelta(hours=2))) is None


def test_list(db):
    result(db.apikeys.create("first", T0))
    result(db.apikeys.create("second", T0 + dt.timedelta(seconds=1)))
    result(db.apikeys.revoke("first", T0 + dt.timedelta(seconds=2)))
    keys = result(db.apikeys.list())
    assert [(k.name, k.revoked) for k in keys] == [("first", True), ("second", False)]


def test_errors_change_nothing(db):
    result(db.apikeys.create("ci", T0))
    with pytest.raises(DuplicateApiKeyName, match="'ci' already exists"):
        result(db.apikeys.create("ci", T0))
    with pytest.raises(UnknownApiKey, match="no API key named 'nope'"):
        result(db.apikeys.revoke("nope", T0))
    for bad in ("", " ci", "a b", "x" * 201, "-dash"):
        with pytest.raises(ApiKeyError, match="invalid API key name"):
            result(db.apikeys.create(bad, T0))
    result(db.apikeys.revoke("ci", T0))
    with pytest.raises(ApiKeyError, match="already revoked"):
        result(db.apikeys.revoke("ci", T0))
    assert [k.name for k in result(db.apikeys.list())] == ["ci"]


def test_server_uuid_is_generated_once(db):
    first = result(db.settings.server_uuid())
    assert len(first) == 36
    assert result(db.settings.server_uuid()) == first
    # Stable per installation: another connection to the same database agrees.
    other = connect(db.engine.url.render_as_string(hide_password=False), inline_runner)
    assert result(other.settings.server_uuid()) == first
    other.close()


# --- the command ---------------------------------------------------------------


def ridgeline(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "ridgeline", *argv], capture_output=True, text=True,
                          timeout=60, env=env)


def test_api_key_command(tmp_path, database_url):
    common = ["--data-dir", str(tmp_path / "data"), "--database", database_url]
    refused = ridgeline("api-key", "list", *common)
    assert refused.returncode == 1 and "ridgeline db upgrade" in refused.stderr
    assert ridgeline("db", "upgrade", *common).returncode == 0

    created = ridgeline("api-key", "create", "--name", "ci", *common)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("rl_") and "\n" not in secret

    db = connect(database_url, inline_runner)
    try:
        assert result(db.apikeys.authenticate(secret, T0)).name == "ci"
        dup = ridgeline("api-key", "create", "--name", "ci", *common)
        assert dup.returncode == 1 and dup.stderr.strip() == "ridgeline api-key create: an API key named 'ci' already exists"
        listed = ridgeline("api-key", "list", *common)
        assert listed.returncode == 0
        header, row = listed.stdout.strip().splitlines()
        assert header.split()[:2] == ["NAME", "CREATED"] and row.split()[0] == "ci" and row.split()[-1] == "-"
        assert secret not in listed.stdout
        assert ridgeline("api-key", "revoke", "ci", *common).returncode == 0
        assert result(db.apikeys.authenticate(secret, T0)) is None
        unknown = ridgeline("api-key", "revoke", "nope", *common)
        assert unknown.returncode == 1 and "no API key named 'nope'" in unknown.stderr
        assert "Traceback" not in unknown.stderr + dup.stderr
    finally:
        db.close()


@pytest.mark.parametrize("argv", [["api-key", "list"], ["db", "current"]])
@pytest.mark.parametrize("where", ["data_dir", "sqlite_url"])
def test_read_only_commands_create_no_database(argv, where, tmp_path):
    missing = tmp_path / "nowhere"
    if where == "data_dir":
        place = ["--data-dir", str(missing)]
    else:
        place = ["--data-dir", str(tmp_path), "--database", f"sqlite:///{missing / 'x.sqlite'}"]
        missing.mkdir()
    done = ridgeline(*argv, *place)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no database at" in done.stdout + done.stderr and "ridgeline db upgrade" in done.stdout + done.stderr
    assert list(tmp_path.rglob("*")) == ([] if where == "data_dir" else [missing])


def test_an_over_long_key_name_is_not_echoed_in_full(tmp_path):
    name = "n" * 5000
    assert ridgeline("db", "upgrade", "--data-dir", str(tmp_path)).returncode == 0
    done = ridgeline("api-key", "create", "--name", name, "--data-dir", str(tmp_path))
    assert done.returncode == 1 and "invalid API key name" in done.stderr
    assert len(done.stderr) < 400 and "5000 characters" in done.stderr
