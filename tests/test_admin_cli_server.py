"""The admin CLI end to end: the real ``ridgeline`` command functions against a real
``ridgeline server`` process (SQLite, loopback port 0), with computers seeded in
its database and a small server activity type installed as a plugin package."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ridgeline.cli import main

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc

PLUGIN = """
from server.hookspecs import ActivityType, hookimpl


async def run(job):
    return "ran"


@hookimpl
def ridgeline_activity_types():
    return [ActivityType(
        name="cli-test-job", kind="server", description="a job for the admin CLI's tests",
        parameters_schema={"type": "object", "additionalProperties": False, "properties": {
            "n": {"type": "integer"}, "flag": {"type": "boolean"}, "words": {"type": "array"},
            "label": {"type": "string"}}},
        run=run)]
"""


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.key_file = root / "api-key"
        self.proc = None
        self.url = None

    def start(self):
        dist = self.root / "plugin"
        (dist / "cli_test_plugin.py").parent.mkdir(parents=True)
        (dist / "cli_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
        info = dist / "cli_test_plugin-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cli-test-plugin\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[ridgeline.jobs]\ncli_test = cli_test_plugin\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(dist), *filter(None, [os.environ.get("PYTHONPATH")])]))
        port_file = self.root / "port"
        self.stderr = open(self.root / "server.log", "w")
        # With its in-process job-handler (db queue), so server activities run.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ridgeline", "server", "--data-dir", str(self.data),
             "--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the server did not start:\n" + (self.root / "server.log").read_text())
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        done = subprocess.run(
            [sys.executable, "-m", "ridgeline", "api-key", "create", "--name", "test", "--data-dir", str(self.data)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        self.key_file.write_text(done.stdout)
        from server.db import connect, inline_runner

        self.db = connect(f"sqlite:///{self.data / 'ridgeline.sqlite'}", inline_runner)

    def stop(self):
        if getattr(self, "db", None) is not None:
            self.db.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    # --- direct access to the store (seeding, and playing the agent's part) -------

    def add_computer(self, title: str, *, accepted: bool = True, tags=()) -> int:
        from server.db.computers import NewComputer

        with self.db.engine.begin() as conn:
            return self.db.computers.create_thd(conn, NewComputer(
                title=title, hostname=f"{title}.example", account_name="standalone",
                secure_id=f"secure-{title}-{time.monotonic_ns()}".encode(), accepted=accepted, tags=list(tags),
            ), dt.datetime.now(UTC)).id

    def finish(self, activity_id: int, to: str, text: str) -> None:
        """What the message system does on delivery and on the agent's result."""
        now = dt.datetime.now(UTC)
        with self.db.engine.begin() as conn:
            self.db.activities.transition_thd(conn, activity_id, "queued", "in-progress", actor="test", reason="delivered", now=now)
        with self.db.engine.begin() as conn:
            self.db.activities.transition_thd(conn, activity_id, "in-progress", to, actor="test", reason="result",
                                              now=now, values={"result_text": text})

    def attachment(self, attachment_id: int):
        from server.db.tables import attachments
        import sqlalchemy as sa

        with self.db.engine.connect() as conn:
            return conn.execute(sa.select(attachments).where(attachments.c.id == attachment_id)).one()._mapping


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("admin-cli"))
    try:
        s.start()
        yield s
    finally:
        s.stop()
    log = (s.root / "server.log").read_text()
    assert "Traceback" not in log, log


@pytest.fixture
def cli(server, capsys, monkeypatch):
    """Run ``ridgeline ARGV... --url URL --api-key-file FILE``: (exit status, stdout, stderr)."""
    for k in ("RIDGELINE_URL", "RIDGELINE_API_KEY", "RIDGELINE_API_KEY_FILE"):
        monkeypatch.delenv(k, raising=False)

    def run(*argv, auth=True):
        argv = [str(a) for a in argv]
        if auth:
            argv += ["--url", server.url, "--api-key-file", str(server.key_file)]
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def ok(result):
    code, out, err = result
    assert code == 0, err
    return out


def as_json(result):
    return json.loads(ok(result))


def created_id(out: str) -> int:
    assert out.startswith("activity "), out
    return int(out.split()[1])


SCRIPT = "#!/bin/sh\necho hello\n"


# --- computers ------------------------------------------------------------------------


def test_computers_list_show_accept_tag_remove(server, cli):
    a = server.add_computer("alpha", tags=["web"])
    b = server.add_computer("beta", accepted=False)

    table = ok(cli("computers", "list")).splitlines()
    assert table[0].split() == ["ID", "TITLE", "HOSTNAME", "STATE", "LAST", "SEEN", "TAGS"]
    rows = {int(line.split()[0]): line.split() for line in table[1:]}
    assert rows[a][1:4] == ["alpha", "alpha.example", "accepted"] and rows[a][-1] == "web"
    assert rows[b][1:4] == ["beta", "beta.example", "pending"]

    pending = as_json(cli("computers", "list", "--status", "pending", "--json"))
    assert b in [c["id"] for c in pending["results"]] and a not in [c["id"] for c in pending["results"]]

    shown = ok(cli("computers", "show", b))
    assert "title:" in shown and "beta" in shown and "pending" in shown

    assert ok(cli("computers", "accept", b)) == f"computer {b} accepted\n"
    assert as_json(cli("computers", "show", b, "--json"))["status"] == "accepted"

    assert ok(cli("computers", "tag", a, "--add", "db", "eu")) == f"computer {a} tags: db, eu, web\n"
    assert ok(cli("computers", "tag", a, "--remove", "web")) == f"computer {a} tags: db, eu\n"
    assert as_json(cli("computers", "show", a, "--json"))["tags"] == ["db", "eu"]
    assert ok(cli("computers", "tag", a, "--set")) == f"computer {a} tags: (none)\n"
    code, _, err = cli("computers", "tag", a)
    assert code == 2 and "--add" in err

    # Removing a computer cancels its unfinished activities and says so.
    aid = created_id(ok(cli("activities", "run-script", "--computer", b, "--code", SCRIPT, "--user", "root")))
    assert ok(cli("computers", "remove", b)) == f"computer {b} removed; canceled its activities {aid}\n"
    assert as_json(cli("activities", "show", aid, "--json"))["state"] == "canceled"
    code, out, err = cli("computers", "show", b)
    assert (code, out, err) == (1, "", f"ridgeline: error: no computer {b} (HTTP 404)\n")


def test_several_ids_go_on_after_a_failure(server, cli):
    a = server.add_computer("gamma", accepted=False)
    code, out, err = cli("computers", "accept", a, 999999)
    assert code == 1
    assert out == f"computer {a} accepted\n"
    assert err == "ridgeline: error: no computer 999999 (HTTP 404)\n"


# --- activities -----------------------------------------------------------------------


def test_run_script_list_show_cancel_twice(server, cli):
    c = server.add_computer("delta")
    out = ok(cli("activities", "run-script", "--computer", c, "--code", SCRIPT, "--user", "root",
                 "--time-limit", "30", "--summary", "say hello"))
    aid = created_id(out)
    assert out.splitlines()[0] == f"activity {aid} created (execute-script, {c}): queued"

    listed = ok(cli("activities", "list", "--computer", c)).splitlines()
    assert listed[0].split()[:4] == ["ID", "TYPE", "STATE", "COMPUTER"]
    assert listed[1].split()[:4] == [str(aid), "execute-script", "queued", str(c)]
    assert listed[1].endswith("say hello")

    a = as_json(cli("activities", "show", aid, "--json"))
    assert a["parameters"] == {"code": SCRIPT, "username": "root", "time_limit": 30, "interpreter": "/bin/sh"}
    shown = ok(cli("activities", "show", aid))
    assert "summary:" in shown and "say hello" in shown
    assert "history:" in shown and "(new) → queued" in shown

    assert ok(cli("activities", "cancel", aid, "--reason", "changed my mind")) == f"activity {aid} canceled\n"
    code, out, err = cli("activities", "cancel", aid)
    assert code == 1 and out == ""
    assert err.startswith(f"ridgeline: error: activity {aid} is canceled") and err.endswith(" (HTTP 409)\n")
    assert err.count("\n") == 1

    events = ok(cli("events", "--activity", aid)).splitlines()
    assert events[0].split()[:4] == ["TIME", "ACTIVITY", "COMPUTER", "EVENT"]
    assert [e.split("  ")[-2:] for e in events[1:]][-1][-1] == "changed my mind"
    assert "(new) → queued" in events[1] and "queued → canceled" in events[2]  # oldest first
    assert as_json(cli("events", "--activity", aid, "--json"))["count"] == 2

    reapplied = ok(cli("activities", "reapply", aid))
    new = created_id(reapplied)
    assert reapplied == f"activity {new} created from activity {aid}; queued\n"
    assert as_json(cli("activities", "show", new, "--json"))["origin_id"] == aid


def test_approve_pause_resume(server, cli):
    c = server.add_computer("epsilon")
    aid = created_id(ok(cli("activities", "run-script", "--computer", c, "--code", SCRIPT, "--user", "root",
                            "--requires-approval")))
    assert as_json(cli("activities", "show", aid, "--json"))["blocked_reason"] == "approval"
    code, _, err = cli("activities", "resume", aid)
    assert code == 1 and "(HTTP 409)" in err and "approval" in err
    assert ok(cli("activities", "approve", aid)) == f"activity {aid} approved; now queued\n"
    code, _, err = cli("activities", "approve", aid)
    assert code == 1 and err.startswith(f"ridgeline: error: activity {aid} is queued") and "(HTTP 409)" in err
    assert ok(cli("activities", "pause", aid)) == f"activity {aid} paused; now blocked (paused)\n"
    assert ok(cli("activities", "resume", aid)) == f"activity {aid} resumed; now queued\n"
    history = as_json(cli("activities", "show", aid, "--json"))["history"]
    assert [(h["from_state"], h["to_state"]) for h in history if h["event"] == "transition"] == [
        (None, "blocked"), ("blocked", "queued"), ("queued", "blocked"), ("blocked", "queued")]


def test_run_script_by_tag_with_schedule_wait_and_attachments(server, cli, tmp_path):
    tag = f"t{time.monotonic_ns()}"
    c1, c2 = server.add_computer("zeta", tags=[tag]), server.add_computer("eta", tags=[tag])
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    (tmp_path / "data.txt").write_bytes(b"some data\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    first = created_id(ok(cli("activities", "run-script", "--computer", c1, "--code", SCRIPT, "--user", "root")))

    out = ok(cli("activities", "run-script", "--tag", tag, "--file", script, "--user", "nobody",
                 "--attach", tmp_path / "data.txt", tmp_path / "blob.bin", "--deliver-after", "+2h",
                 "--deliver-before", "+1d", "--wait-for", f"{first}:50", "--delay-window", "60"))
    gid = created_id(out)
    assert "group of 2" in out.splitlines()[0]
    g = as_json(cli("activities", "show", gid, "--json"))
    assert g["is_group"] and g["children_count"] == 2 and g["state"] == "waiting"
    assert g["wait_for"] == {"activity_id": first, "threshold": 50}
    assert g["deliver_delay_window"] == 60
    after = dt.datetime.fromisoformat(g["deliver_after"])
    before = dt.datetime.fromisoformat(g["deliver_before"])
    assert dt.timedelta(hours=1, minutes=59) < after - dt.datetime.now(UTC) <= dt.timedelta(hours=2)
    assert dt.timedelta(hours=21) < before - after <= dt.timedelta(hours=22)
    attachments = g["parameters"]["attachments"]
    assert sorted(attachments) == ["blob.bin", "data.txt"]
    assert server.attachment(attachments["data.txt"])["name"] == "data.txt"
    assert server.attachment(attachments["blob.bin"])["size"] == 256

    children = as_json(cli("activities", "list", "--parent", gid, "--json"))
    assert sorted(a["computer_id"] for a in children["results"]) == sorted([c1, c2])
    shown = ok(cli("activities", "show", gid, "--children"))
    assert "children:" in shown and "by state:" in shown and "waiting 2" in shown

    code, out, err = cli("activities", "run-script", "--tag", "no-such-tag-anywhere", "--code", SCRIPT, "--user", "u")
    assert code == 1 and out == "" and err.startswith("ridgeline: error: ") and "(HTTP 400)" in err


def test_watch_until_succeeded_and_until_canceled(server, cli):
    c = server.add_computer("theta")
    aid = created_id(ok(cli("activities", "run-script", "--computer", c, "--code", SCRIPT, "--user", "root")))
    timer = threading.Timer(0.5, server.finish, (aid, "succeeded", "hello"))
    timer.start()
    try:
        code, out, err = cli("activities", "watch", aid, "--interval", "0.1", "--max-wait", "30")
    finally:
        timer.join()
    assert code == 0, err
    lines = out.splitlines()
    assert "(new) → queued" in lines[0] and "queued → in-progress" in lines[1] and "in-progress → succeeded" in lines[2]
    assert lines[-1] == f"activity {aid} ended succeeded: hello"

    c2 = server.add_computer("iota")
    gid = created_id(ok(cli("activities", "run-script", "--computer", c, c2, "--code", SCRIPT, "--user", "root")))
    child = min(a["id"] for a in as_json(cli("activities", "list", "--parent", gid, "--json"))["results"])
    server.finish(child, "failed", "exit 1")
    timer = threading.Timer(0.5, lambda: main(["activities", "cancel", str(gid), "--url", server.url,
                                                "--api-key-file", str(server.key_file)]))
    timer.start()
    try:
        code, out, err = cli("activities", "watch", gid, "--interval", "0.1", "--max-wait", "30")
    finally:
        timer.join()
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0] == f"activity {gid} in-progress: 1/2 children final (50%) — queued 1, failed 1"
    assert lines[-1] == f"activity {gid} ended failed: failed 1, canceled 1"


def test_run_job_parameters_and_types(server, cli):
    out = ok(cli("activities", "run-job", "cli-test-job", "--param", "n=3", "--param", "flag=true",
                 "--param", "words=[1, \"a\"]", "--param", "label=hello world", "--summary", "typed params"))
    aid = created_id(out)
    a = as_json(cli("activities", "show", aid, "--json"))
    assert a["kind"] == "server" and a["summary"] == "typed params"
    assert a["parameters"] == {"n": 3, "flag": True, "words": [1, "a"], "label": "hello world"}

    code, out, err = cli("activities", "run-job", "cli-test-job", "--param", "n=three")
    assert code == 1 and out == "" and "(HTTP 400)" in err and "n" in err
    code, _, err = cli("activities", "run-job", "no-such-type")
    assert code == 1 and err == "ridgeline: error: unknown activity type 'no-such-type' (HTTP 400)\n"

    types = ok(cli("activities", "types")).splitlines()
    row = next(t for t in types if t.startswith("cli-test-job"))
    assert row.split()[:2] == ["cli-test-job", "server"] and "[flag]" in row
    assert any(t.startswith("execute-script") for t in types)


def test_run_job_and_watch_it_succeed(server, cli):
    code, out, err = cli("activities", "run-job", "cli-test-job", "--param", "n=1", "--watch", "--interval", "0.1")
    assert code == 0, err
    lines = out.splitlines()
    aid = created_id(lines[0])
    assert lines[0] == f"activity {aid} created (cli-test-job, server activity): queued"
    assert any("queued → in-progress" in line for line in lines)
    assert lines[-1] == f"activity {aid} ended succeeded: ran"


def test_output_of_an_activity_without_one_is_a_clear_error(server, cli):
    aid = created_id(ok(cli("activities", "run-job", "cli-test-job")))
    code, out, err = cli("activities", "output", aid)
    assert (code, out, err) == (1, "", f"ridgeline: error: activity {aid} has no output\n")


def test_output_of_a_report_job(server, cli):
    code, out, err = cli("activities", "run-job", "activity-report", "--param", "type=cli-test-job",
                         "--watch", "--interval", "0.1")
    assert code == 0, (out, err)
    aid = next(line.split()[1] for line in out.splitlines() if line.startswith("activity "))
    code, out, err = cli("activities", "output", aid)
    assert code == 2 and "activities.csv" in err and "activities.json" in err
    csv_text = ok(cli("activities", "output", aid, "activities.csv"))
    assert csv_text.splitlines()[0].startswith("id,")


def test_list_paging_note(server, cli):
    for _ in range(3):
        ok(cli("activities", "run-job", "cli-test-job", "--summary", "paging"))
    out = ok(cli("activities", "list", "--type", "cli-test-job", "--limit", "2")).splitlines()
    assert len(out) == 4 and out[-1].startswith("(2 of ") and out[-1].endswith("use --offset 2 for the next page)")


def test_every_route_the_cli_calls_is_in_the_openapi_document(server):
    import urllib.request

    from ridgeline.admin.commands import ROUTES_USED

    req = urllib.request.Request(f"{server.url}/api/v1/openapi.json",
                                 headers={"Authorization": f"Bearer {server.key_file.read_text().strip()}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m.upper() in
              ("GET", "POST", "PUT", "DELETE", "PATCH")}
    assert set(ROUTES_USED) - served == set()


def test_authentication_errors(server, cli, tmp_path):
    code, out, err = cli("activities", "list", "--url", server.url, "--api-key", "wrong", auth=False)
    assert (code, out, err) == (1, "", "ridgeline: error: the API key was refused (HTTP 401)\n")
    code, _, err = cli("computers", "list", "--url", server.url, auth=False)
    assert code == 1 and "the server wants an API key" in err and "(HTTP 401)" in err


def test_the_key_and_url_from_the_environment(server, cli, monkeypatch):
    monkeypatch.setenv("RIDGELINE_URL", server.url)
    monkeypatch.setenv("RIDGELINE_API_KEY", server.key_file.read_text().strip())
    assert ok(cli("computers", "list", auth=False)).startswith("ID  ")
