"""The running server: /healthz, mount points, body limit, and the real
``ridgeline server`` process (port 0, --port-file, SIGTERM)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from api_support import fired
from server import web
from server.config import ServerConfig
from server.context import ServerContext
from server.db import connect, inline_runner, migrate
from server.db.base import Database, create_engine


def get(treq, url):
    d = treq.get(url)
    treq.flush()
    response = fired(d)
    body = fired(response.content())
    return response.code, body


@pytest.fixture
def context(sqlite_url):
    db = connect(sqlite_url, inline_runner)
    migrate.upgrade(db.engine)
    yield ServerContext(reactor=Clock(), db=db, config=ServerConfig())
    db.close()


def test_healthz_ok(context):
    code, body = get(StubTreq(web.build_root(context)), "http://server/healthz")
    assert code == 200 and json.loads(body) == {"status": "ok", "database": "ok"}


def test_healthz_when_the_database_fails(tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite'}", inline_runner)
    ctx = ServerContext(reactor=Clock(), db=db, config=ServerConfig())
    code, body = get(StubTreq(web.build_root(ctx)), "http://server/healthz")
    assert code == 503 and json.loads(body)["database"] == "unavailable"


def test_healthz_when_the_database_does_not_answer(sqlite_url):
    never = Database(create_engine(sqlite_url), lambda fn, *a, **k: defer.Deferred())
    clock = Clock()
    treq = StubTreq(web.HealthResource(never, clock))
    responses = []
    treq.get("http://server/healthz").addBoth(responses.append)
    treq.flush()
    clock.advance(web.HEALTH_TIMEOUT - 0.1)
    treq.flush()
    assert responses == []
    clock.advance(0.1)
    treq.flush()
    assert [r.code for r in responses] == [503]


def test_unknown_path_is_a_json_404(context):
    code, body = get(StubTreq(web.build_root(context)), "http://server/no/such/thing")
    assert code == 404 and json.loads(body)["error"]["code"] == "not-found"


class Echo(Resource):
    isLeaf = True

    def __init__(self, label):
        super().__init__()
        self.label = label

    def render_GET(self, request):
        return json.dumps([self.label, [p.decode() for p in request.postpath]]).encode()


def test_mount_points(context, monkeypatch):
    seen = []

    def make_resource(ctx):
        seen.append(ctx)
        return Echo("api")

    monkeypatch.setitem(sys.modules, "server.api", types.SimpleNamespace(make_resource=make_resource))
    monkeypatch.setitem(
        sys.modules,
        "server.messagesystem",
        types.SimpleNamespace(make_resources=lambda ctx: {b"message-system": Echo("ms"), "ping": Echo("ping")}),
    )
    treq = StubTreq(web.build_root(context))
    assert json.loads(get(treq, "http://server/api/v1/activities/7")[1]) == ["api", ["activities", "7"]]
    assert json.loads(get(treq, "http://server/message-system")[1]) == ["ms", []]
    assert json.loads(get(treq, "http://server/ping")[1]) == ["ping", []]
    assert get(treq, "http://server/healthz")[0] == 200
    assert seen == [context]


def test_a_mount_point_may_not_shadow_healthz(context, monkeypatch):
    monkeypatch.setitem(sys.modules, "server.messagesystem",
                        types.SimpleNamespace(make_resources=lambda ctx: {b"healthz": Echo("x")}))
    with pytest.raises(ValueError, match="bad mount point"):
        web.build_root(context)


# --- the real process ------------------------------------------------------------


def start_server(tmp_path: Path, *extra, env=None):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ridgeline", "server", "--data-dir", str(tmp_path / "data"),
         "--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(port_file), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"server exited with {proc.returncode}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server did not write its port file")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.e2e
def test_server_process_serves_healthz_and_stops_on_sigterm(tmp_path, database_url):
    proc, port = start_server(tmp_path, "--database", database_url, "--max-body-size", "1KiB")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
            assert json.loads(r.read()) == {"status": "ok", "database": "ok"}
        big = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", data=b"x" * 2048, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big, timeout=10)
        assert e.value.code == 413
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert f"bound port {port}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "port").exists()
    # The schema was migrated at start and the server uuid stored once.
    db = connect(database_url, inline_runner)
    try:
        assert migrate.status(db.engine).is_current
        uuid = fired(db.settings.server_uuid())
        assert uuid in err
    finally:
        db.close()


@pytest.mark.e2e
def test_default_database_and_sigint(tmp_path):
    proc, port = start_server(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    data = tmp_path / "data"
    assert (data / "ridgeline.sqlite").is_file()
    assert data.stat().st_mode & 0o777 == 0o700
    # Restarting keeps the same server uuid.
    proc, _ = start_server(tmp_path)
    code, err2 = stop(proc)
    assert code == 0
    uuid = err.split("Ridgeline server ")[1].split()[0]
    assert f"Ridgeline server {uuid} starting" in err2


@pytest.mark.e2e
def test_no_migrate_refuses_an_empty_schema(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ridgeline", "server", "--no-migrate", "--data-dir", str(tmp_path / "data"),
         "--listen", "tcp:0:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "ridgeline db upgrade" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.e2e
def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ridgeline", "server", "--data-dir", str(tmp_path / "data"),
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on tcp:{port}" in done.stderr and "Traceback" not in done.stderr


def test_an_optional_part_is_skipped_only_when_it_is_not_installed(tmp_path, monkeypatch):
    from twisted.logger import Logger, formatEvent

    events = []
    log = Logger(observer=events.append)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "rl_part_without.py").write_text("x = 1\n")
    (tmp_path / "rl_part_broken.py").write_text("import rl_no_such_dependency\n")
    (tmp_path / "rl_part_ok.py").write_text("def make_service(context):\n    return ('made', context)\n")

    assert web.optional_factory("rl_part_missing", "make_service", log=log, absent="not started") is None
    assert web.optional_factory("rl_part_without", "make_service", log=log, absent="not started") is None
    assert [formatEvent(e) for e in events] == ["rl_part_missing is not installed: not started",
                                                "rl_part_without has no make_service(): not started"]
    # A part that is there but cannot import is a bug, not an absent part.
    with pytest.raises(ModuleNotFoundError):
        web.optional_factory("rl_part_broken", "make_service", log=log)
    assert web.optional_factory("rl_part_ok", "make_service", log=log)("ctx") == ("made", "ctx")
