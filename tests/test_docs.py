"""The docs are true: their commands run, their links resolve, their example
plugin packages work.

Runnable commands: every fenced block whose info string is exactly ``sh`` in
``docs/quickstart.md`` and then ``docs/api.md`` (which continues from the quick
start) is run, in order, in one ``bash -e -o pipefail`` session, in a scratch
directory, with ``.venv/bin`` on ``PATH`` and no ``RIDGELINE_*`` variables
inherited. An HTML comment on the line before a block changes how it runs:

- ``<!-- docs-test: background; ready: COMMAND -->``: a long-running process
  (the server, an agent) started in the background in its own process group,
  then ``COMMAND`` is polled until it succeeds; the group is stopped at the end;
- ``<!-- docs-test: skip -->``: shown, not run (something that needs root).

The documented address ``127.0.0.1:8080`` is replaced by a free loopback port,
so ``export RIDGELINE_URL=http://127.0.0.1:8080`` in the docs points at the
test's server, started by the docs' own ``ridgeline server`` command.

Example packages (``docs/examples/*``) are used as a user's installed package
would be, without installing anything into ``.venv``: the source directory and a
generated ``.dist-info`` (entry points read from the example's pyproject.toml)
go on ``PYTHONPATH`` / ``sys.path``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.internet.task import Clock

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
HANDLER = EXAMPLES / "ridgeline-example-handler"
JOB = EXAMPLES / "ridgeline-example-job"
DOC_PORT = "8080"
RUNNABLE_DOCS = ("quickstart.md", "api.md")


# --- example packages on the path, as if installed -----------------------------------


def write_dist_info(example: Path, into: Path) -> Path:
    """``into/<name>-<version>.dist-info`` with METADATA and entry_points.txt taken
    from ``example/pyproject.toml``; returns ``into``."""
    project = tomllib.loads((example / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = into / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{k} = {v}" for k, v in eps.items())
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return into


def example_path(tmp_path: Path, *examples: Path) -> list[str]:
    """The ``sys.path`` entries that make ``examples`` importable and discoverable."""
    entries = []
    for ex in examples:
        entries.append(str(ex))
        entries.append(str(write_dist_info(ex, tmp_path / f"meta-{ex.name}")))
    return entries


@pytest.fixture
def installed_examples(tmp_path, monkeypatch):
    import importlib

    for entry in example_path(tmp_path, HANDLER, JOB):
        monkeypatch.syspath_prepend(entry)
    importlib.invalidate_caches()
    yield
    for mod in list(sys.modules):
        if mod.split(".")[0] in ("ridgeline_example_handler", "ridgeline_example_job"):
            del sys.modules[mod]


def proc_uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_handler_example_through_the_agent_plugin_manager(installed_examples, tmp_path):
    from agent.config import make_config
    from agent.hookspecs import OperationContext, OperationResult
    from agent.plugins import AgentPlugins
    from protocol import codes
    from twisted.logger import Logger

    plugins = AgentPlugins.load(Clock(), None, builtins={})
    assert "uptime-report" in plugins.names()
    assert "uptime-report" in plugins.message_types()
    config = make_config({"url": "http://server.test/message-system", "data_path": str(tmp_path)})
    context = OperationContext(operation_id=12, reactor=Clock(), config=config, http=None, secure_id=b"s",
                               log=Logger(), record_process=lambda *a: None)
    got = []
    before = proc_uptime()
    plugins.handle({"type": "uptime-report", "operation-id": 12, "paths": ["/", str(tmp_path / "nope")]},
                   context).addBoth(got.append)
    result = got[0]
    assert isinstance(result, OperationResult) and result.status == codes.SUCCEEDED, result
    lines = result.result_text.splitlines()
    seconds = int(re.fullmatch(r"up .+ \((\d+) s\)", lines[0]).group(1))
    assert before - 1 <= seconds <= proc_uptime() + 1
    assert lines[1] == "load average: " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    assert re.fullmatch(r"/: \d+% used, [\d.]+ GiB free of [\d.]+ GiB", lines[2])
    assert lines[3].endswith("nope: cannot read (No such file or directory)")
    # Messages of other types are left to other plugins.
    assert plugins.handle({"type": "execute-script", "operation-id": 13}, context) is None


def test_handler_example_server_type_validates_parameters(installed_examples):
    from server.hookspecs import ParameterError
    from server.plugins import ActivityTypes

    types = ActivityTypes.from_plugins()
    t = types.get("uptime-report")
    assert t is not None and t.kind == "client" and t.agent_message_type == "uptime-report"
    assert types.validate("uptime-report", {}) == {"paths": ["/"]}
    with pytest.raises(ParameterError) as e:
        types.validate("uptime-report", {"paths": ["relative/path"]})
    assert e.value.field == "parameters.paths.0"
    with pytest.raises(ParameterError) as e:
        types.validate("uptime-report", {"paths": ["/", "/"]})
    assert e.value.field == "parameters.paths"
    assert types.get("computers-by-tag").kind == "server"


def test_job_example_csv():
    sys.path.insert(0, str(JOB))
    try:
        from collections import Counter

        from ridgeline_example_job import to_csv

        text = to_csv(Counter({"web": 2, "db": 1, "eu": 2}), {"web": [1, 3], "db": [2], "eu": [1, 2]}).decode()
    finally:
        sys.path.remove(str(JOB))
        sys.modules.pop("ridgeline_example_job", None)
    assert list(csv.reader(io.StringIO(text))) == [
        ["tag", "computers", "computer_ids"], ["eu", "2", "1 2"], ["web", "2", "1 3"], ["db", "1", "2"]]


# --- real processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, what: str, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


class Api:
    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw
        except urllib.error.HTTPError as e:
            pytest.fail(f"{method} {path}: HTTP {e.code} {e.read()!r}")

    def final(self, activity_id: int) -> dict:
        def done():
            a = self.call("GET", f"/activities/{activity_id}")
            return a if a["state"] in ("succeeded", "failed", "canceled") and not a["cancel_provisional"] else None

        return wait_until(done, f"activity {activity_id} to end")


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_examples_in_a_real_server_and_agent(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIDGELINE_")}
    env["PYTHONPATH"] = os.pathsep.join([*example_path(tmp_path, HANDLER, JOB), str(REPO)])
    port_file, data = tmp_path / "port", tmp_path / "server-data"
    procs = []

    def start(name, *argv):
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "ridgeline", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        server = start("server", "server", "--data-dir", str(data), "--listen", "tcp:0:interface=127.0.0.1",
                       "--port-file", str(port_file))
        wait_until(lambda: port_file.exists() or server.poll() is not None, "the server to listen")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        key = subprocess.run([sys.executable, "-m", "ridgeline", "api-key", "create", "--name", "t", "--data-dir",
                              str(data)], env=env, capture_output=True, text=True, check=True).stdout.strip()
        api = Api(url, key)
        listed = {t["name"]: t for t in api.call("GET", "/activity-types")["results"]}
        assert listed["uptime-report"]["kind"] == "client"
        assert listed["uptime-report"]["parameters_schema"]["properties"]["paths"]["default"] == ["/"]
        assert listed["computers-by-tag"]["kind"] == "server"

        start("agent", "agent", "--url", f"{url}/message-system", "--data-path", str(tmp_path / "agent"),
              "--tags", "web,eu", "--exchange-interval", "1", "--urgent-exchange-interval", "1",
              "--ping-interval", "1")
        computer = wait_until(lambda: api.call("GET", "/computers")["results"], "the agent to register")[0]
        api.call("POST", f"/computers/{computer['id']}/accept")

        before = proc_uptime()
        a = api.call("POST", "/activities", {"type": "uptime-report", "computer_ids": [computer["id"]],
                                             "parameters": {"paths": ["/", str(tmp_path)]}})
        done = api.final(a["id"])
        assert done["state"] == "succeeded", done
        lines = done["result_text"].splitlines()
        seconds = int(re.fullmatch(r"up .+ \((\d+) s\)", lines[0]).group(1))
        assert before - 1 <= seconds <= proc_uptime() + 1
        assert lines[1].startswith("load average: ")
        assert lines[3].startswith(f"{tmp_path}: ") and "% used" in lines[3]

        # Two more computers, seeded in the database, for the job to count.
        from server.db import connect, inline_runner
        from server.db.computers import NewComputer
        import datetime as dt

        db = connect(f"sqlite:///{data / 'ridgeline.sqlite'}", inline_runner)
        try:
            for title, tags in (("db1", ["db", "eu"]), ("bare", [])):
                with db.engine.begin() as conn:
                    db.computers.create_thd(conn, NewComputer(
                        title=title, hostname=f"{title}.example", account_name="standalone",
                        secure_id=f"secure-{title}".encode(), accepted=True, tags=tags),
                        dt.datetime.now(dt.timezone.utc))
        finally:
            db.close()
        job = api.final(api.call("POST", "/activities", {"type": "computers-by-tag"})["id"])
        assert job["state"] == "succeeded", job
        assert job["result_text"] == ("3 computers, 4 tags: eu 2, (untagged) 1, db 1, web 1. "
                                      "Output computers-by-tag.csv.")
        outputs = api.call("GET", f"/activities/{job['id']}/output")["outputs"]
        assert [o["name"] for o in outputs] == ["computers-by-tag.csv"]
        rows = list(csv.DictReader(io.StringIO(
            api.call("GET", f"/activities/{job['id']}/output/computers-by-tag.csv").decode())))
        by_tag = {r["tag"]: (int(r["computers"]), r["computer_ids"]) for r in rows}
        assert by_tag["eu"][0] == 2 and by_tag["web"] == (1, str(computer["id"]))
        assert set(by_tag) == {"eu", "web", "db", "(untagged)"}
    finally:
        for proc in reversed(procs):
            stop_group(proc)


# --- the docs' commands ---------------------------------------------------------------

FENCE = re.compile(r"^(?P<fence>```+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<what>.*?)\s*-->\s*\n\s*$")


def runnable_blocks(path: Path) -> list[dict]:
    """The ``sh`` blocks of one doc, with their line and directive."""
    text = path.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("info").strip() != "sh":
            continue
        before = text[:m.start()]
        last_lines = "\n".join(before.splitlines()[-1:]) + "\n"
        directive = DIRECTIVE.search(last_lines)
        kind, ready = "run", None
        if directive:
            what = directive.group("what")
            if what == "skip":
                kind = "skip"
            elif what.startswith("background; ready:"):
                kind, ready = "background", what.removeprefix("background; ready:").strip()
            else:
                raise AssertionError(f"{path.name}: unknown docs-test directive {what!r}")
        blocks.append({"where": f"{path.name}:{before.count(chr(10)) + 1}", "body": m.group("body"),
                       "kind": kind, "ready": ready})
    return blocks


def build_script(blocks: list[dict], port: int, pids: Path) -> str:
    out = ["set -m  # background blocks get process groups of their own", f"PIDS={pids}"]
    for i, b in enumerate(blocks):
        if b["kind"] == "skip":
            continue
        body = b["body"].replace(DOC_PORT, str(port))
        out.append(f"echo '::block {b['where']}' >&2")
        if b["kind"] == "run":
            out.append(body)
        else:
            ready = b["ready"].replace(DOC_PORT, str(port))
            out.append(f"( {body.strip()}\n) > background-{i}.log 2>&1 &\necho $! >> \"$PIDS\"")
            out.append(f"for _ in $(seq 600); do if {ready} >/dev/null 2>&1; then break; fi; sleep 0.1; done")
            out.append(f"{ready} >/dev/null || {{ echo 'not ready: {b['where']}'; cat background-{i}.log; exit 1; }}")
    return "\n".join(out) + "\n"


@pytest.mark.e2e
def test_quickstart_and_api_commands_run(tmp_path):
    blocks = [b for name in RUNNABLE_DOCS for b in runnable_blocks(DOCS / name)]
    assert sum(b["kind"] == "background" for b in blocks) >= 2  # the server and an agent
    assert sum(b["kind"] == "run" for b in blocks) >= 10
    work = tmp_path / "work"
    work.mkdir()
    pids = tmp_path / "pids"
    port = free_port()
    script = tmp_path / "docs.sh"
    script.write_text(build_script(blocks, port, pids))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIDGELINE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        for pid in (pids.read_text().split() if pids.exists() else []):
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    ran = re.findall(r"^::block (\S+)$", done.stderr, re.M)
    assert done.returncode == 0, (
        f"the block at {ran[-1] if ran else '?'} failed (exit {done.returncode})\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    assert len(ran) == sum(b["kind"] != "skip" for b in blocks)


# --- links --------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    text = FENCE.sub("", doc.read_text())
    for m in LINK.finditer(text):
        target = m.group("target")
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        assert dest.exists(), f"{doc.name}: link to {target} — {dest} does not exist"
        if anchor:
            assert dest.suffix == ".md" and anchor in anchors(dest), f"{doc.name}: no anchor #{anchor} in {dest.name}"


def test_readme_links_every_doc():
    readme = (REPO / "README.md").read_text()
    for doc in sorted(DOCS.glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"
    assert readme.index("make demo") < readme.index("## ")  # the two commands come first
