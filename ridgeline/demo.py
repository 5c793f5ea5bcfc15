"""``ridgeline demo``: a real server and a real agent on this machine, activities end to end.

The demo makes a fresh data directory, starts ``ridgeline server`` (SQLite there,
the ``db`` queue, its in-process job-handler) on a free loopback port and one
``ridgeline agent`` registered to it, as subprocesses. Through the REST API it
then asks for seven activities -- each a feature an administrator uses -- shows
them moving through their states, prints how each one ended, and checks that each
ended the way it should. Every process it started is stopped at the end, on an
error and on Ctrl-C.

The demo's own processes are found again by their process group (each child is
the leader of a new session) and, for the scripts the agent runs (which the
agent puts in sessions of their own), by a marker variable in their environment
(``RIDGELINE_DEMO_DIR``) that the demo asks the server to set for every script.

Exit status: 0 every activity ended as expected; 1 one did not, or the demo
failed (one line says which and why); 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from ridgeline.admin.client import ApiClient, CliError

#: The environment variable that marks every process of one demo (value: its data directory).
MARKER = "RIDGELINE_DEMO_DIR"
FINAL_STATES = ("succeeded", "failed", "canceled")
STATES = ("queued", "scheduled", "waiting", "blocked", "in-progress", *FINAL_STATES)
POLL_INTERVAL = 0.3
#: How long each child gets to stop after SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: Seconds the scheduled script is put ahead.
SCHEDULE_AHEAD = 5
#: How long the script that needs approval is left blocked, so it can be seen.
APPROVE_AFTER = 1.5
#: How long the script to cancel runs before the demo cancels it.
CANCEL_AFTER = 1.0


class DemoError(Exception):
    """The demo cannot go on; the message is the one line printed."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


# --- what the demo asks for ------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One activity of the demo: how it is asked for and how it must end."""

    label: str
    summary: str
    expect_state: str
    expect_result: str | None = None  # result_name, when it matters
    id: int | None = None
    created_at: float | None = None  # time.monotonic() of the request
    activity: dict | None = None  # latest seen
    path: list[str] = dataclasses.field(default_factory=list)  # states entered, in order
    acted: bool = False  # approved / canceled by the demo
    in_progress_since: float | None = None
    output: bytes | None = None  # the report job's CSV
    output_error: str | None = None

    @property
    def final(self) -> bool:
        a = self.activity
        return bool(a) and a["state"] in FINAL_STATES and not a.get("cancel_provisional")


def make_steps() -> list[Step]:
    return [
        Step("facts", "facts of this machine", "succeeded"),
        Step("scheduled", f"scheduled {SCHEDULE_AHEAD} s ahead", "succeeded"),
        Step("approval", "needs approval", "succeeded"),
        Step("wait", "waits for 'facts'", "succeeded"),
        Step("time-limit", "exceeds its time limit", "failed", "time-limit"),
        Step("cancel", "canceled while running", "canceled"),
        Step("report", "activity report (server job)", "succeeded"),
    ]


FACTS_SCRIPT = """#!/bin/sh
echo "hostname: $(hostname)"
echo "kernel:   $(uname -r)"
echo "disk usage of /:"
df -h /
"""


def _utc(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_body(step: Step, *, computer_id: int, user: str, marker: str, steps: dict[str, Step],
                 now: dt.datetime) -> dict:
    """The ``POST /api/v1/activities`` body of one step."""
    def script(code: str, **extra: Any) -> dict:
        params = {"code": code, "username": user, "time_limit": 60, "env": {MARKER: marker}}
        params.update(extra)
        return {"type": "execute-script", "computer_ids": [computer_id], "summary": f"demo: {step.summary}",
                "parameters": params}

    if step.label == "facts":
        return script(FACTS_SCRIPT)
    if step.label == "scheduled":
        body = script('#!/bin/sh\necho "ran at $(date -u +%H:%M:%S) UTC, as scheduled"\n')
        return body | {"deliver_after": _utc(now + dt.timedelta(seconds=SCHEDULE_AHEAD))}
    if step.label == "approval":
        return script('#!/bin/sh\necho "ran after an administrator approved it"\n') | {"requires_approval": True}
    if step.label == "wait":
        first = steps["facts"].id
        return script(f'#!/bin/sh\necho "ran once activity {first} had succeeded"\n') | {
            "wait_for": {"activity_id": first, "threshold": 100}}
    if step.label == "time-limit":
        return script('#!/bin/sh\necho "sleeping 30 s with a 2 s time limit"\nsleep 30\n', time_limit=2)
    if step.label == "cancel":
        return script('#!/bin/sh\necho "working for 30 s unless canceled"\nsleep 30\n')
    if step.label == "report":
        return {"type": "activity-report", "summary": f"demo: {step.summary}", "parameters": {}}
    raise AssertionError(step.label)


def problems_of(step: Step, steps: dict[str, Step]) -> list[str]:
    """Why ``step`` did not end as it should (empty: it did). Pure."""
    a = step.activity
    name = f"{step.label} (activity {step.id})" if step.id is not None else step.label
    if a is None:
        return [f"{name}: was never created"]
    if not step.final:
        return [f"{name}: did not finish; it is {state_label(a)}"]
    found: list[str] = []
    if a["state"] != step.expect_state:
        why = f" ({a['result_name']})" if a.get("result_name") not in (None, a["state"]) else ""
        found.append(f"{name}: ended {a['state']}{why}, expected {step.expect_state}")
    if step.expect_result and a.get("result_name") != step.expect_result:
        found.append(f"{name}: result {a.get('result_name') or 'none'}, expected {step.expect_result}")
    if found:
        return found
    text = a.get("result_text") or ""
    if step.label == "facts":
        for what, value in (("host name", socket.gethostname()), ("kernel release", platform.release())):
            if value not in text:
                found.append(f"{name}: the result does not show this machine's {what} {value!r}")
    elif step.label == "scheduled":
        delivered, after = _parse_iso(a.get("delivered_at")), _parse_iso(a.get("deliver_after"))
        if not (delivered and after and delivered >= after):
            found.append(f"{name}: delivered at {a.get('delivered_at')}, before its time {a.get('deliver_after')}")
    elif step.label == "approval":
        if not a.get("approved_at"):
            found.append(f"{name}: ran without being approved")
    elif step.label == "wait":
        first = steps["facts"].activity or {}
        done, delivered = _parse_iso(first.get("completed_at")), _parse_iso(a.get("delivered_at"))
        if not (done and delivered and delivered >= done):
            found.append(f"{name}: delivered at {a.get('delivered_at')}, before activity {first.get('id')} "
                         f"succeeded at {done}")
    elif step.label == "report":
        if step.output_error:
            found.append(f"{name}: its output is not readable: {step.output_error}")
        elif not (step.output or b"").startswith(b"id,"):
            found.append(f"{name}: its output activities.csv is not the CSV report")
    return found


# --- showing -------------------------------------------------------------------------


def state_label(a: dict) -> str:
    if a["state"] == "blocked" and a.get("blocked_reason"):
        return f"blocked ({a['blocked_reason']})"
    if a["state"] == "canceled" and a.get("cancel_provisional"):
        return "canceled (provisional)"
    return a["state"]


def _parse_iso(value: str | None) -> dt.datetime | None:
    """An API time (ISO 8601, UTC when it has no zone), or None."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _local_time(iso: str | None) -> str:
    t = _parse_iso(iso)
    return t.astimezone().strftime("%H:%M:%S") if t else time.strftime("%H:%M:%S")


def trimmed(text: str | None, *, lines: int = 8, width: int = 100) -> list[str]:
    """A result text cut to a few short lines, for the summary."""
    rows = (text or "").rstrip("\n").splitlines() or ["(no result text)"]
    out = [r if len(r) <= width else r[: width - 1] + "…" for r in rows[:lines]]
    if len(rows) > lines:
        out.append(f"… ({len(rows) - lines} more lines)")
    return out


class Display:
    """Live progress: on a terminal a table redrawn in place, otherwise one line
    per transition (time, id, type, state, which demo step)."""

    def __init__(self, out: TextIO, tty: bool):
        self.out = out
        self.tty = tty
        self._drawn = 0
        self._table: list[str] = []

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._write(f"\x1b[{self._drawn}F\x1b[J")  # up to the table's first line, clear below
            self._drawn = 0

    def note(self, message: str) -> None:
        """A line about what the demo does; on a terminal above the table."""
        self._clear()
        self._write(message + "\n")
        self._draw()

    def transition(self, event: dict, step: Step | None, atype: str) -> None:
        if self.tty:
            return
        label = step.label if step else "-"
        self._write(f"{_local_time(event.get('at'))}  {event['activity_id']:>4}  {atype:<16}  "
                    f"{event.get('to_state') or event['event']:<12}  {label}\n")

    def table(self, steps: list[Step], elapsed: float) -> None:
        if not self.tty:
            return
        rows = [("ID", "TYPE", "SUMMARY", "STATE", "PROGRESS")]
        for s in steps:
            a = s.activity or {}
            rows.append((str(s.id or "-"), a.get("type", "-"), s.summary, state_label(a) if a else "-",
                         f"{a.get('progress', 0):>3}%" if a else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        self._table = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        self._table.append(f"  {elapsed:4.1f} s")
        self._clear()
        self._draw()

    def _draw(self) -> None:
        if self.tty and self._table:
            self._write("\n".join(self._table) + "\n")
            self._drawn = len(self._table)

    def done(self) -> None:
        """Leave the last table on screen."""
        self._drawn = 0
        self._table = []


# --- processes -----------------------------------------------------------------------


def _new_session() -> None:
    """In the child: lead a new session (so a terminal's Ctrl-C reaches only the
    demo, which stops the children itself), and get SIGTERM if the demo dies."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """The children of one demo: started in their own process groups, stopped
    (SIGTERM to the group, SIGKILL after a grace) in reverse order."""

    def __init__(self, marker: str):
        self.marker = marker
        self.children: list[tuple[str, subprocess.Popen, Any]] = []

    def start(self, name: str, argv: list[str], log_path: Path) -> subprocess.Popen:
        log = open(log_path, "ab")
        env = dict(os.environ, **{MARKER: self.marker})
        env.pop("RIDGELINE_CONFIG", None)  # the demo's processes use only what it gives them
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_new_session, close_fds=True)
        except BaseException:
            log.close()
            raise
        self.children.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, log in self.children:
            code = proc.poll()
            if code is not None:
                raise DemoError(f"the {name} exited unexpectedly (status {code}); see {log.name}:\n"
                                + _tail(Path(log.name)))

    def stop_all(self) -> None:
        for name, proc, log in reversed(self.children):
            _stop_group(proc)
            log.close()
        self.children.clear()
        # Twice: a script whose launch was under way when the agent stopped
        # appears a moment later.
        kill_marked(self.marker)
        time.sleep(0.2)
        kill_marked(self.marker)


def _stop_group(proc: subprocess.Popen) -> None:
    pgid = proc.pid  # a session leader: its pid is its group's id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:  # whatever is left of the group (or the leader, after the grace)
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def marked_pids(marker: str, proc_dir: Path = Path("/proc")) -> list[int]:
    """Processes whose environment carries ``RIDGELINE_DEMO_DIR=<marker>``."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(marker: str) -> list[int]:
    """SIGKILL what is left of a demo: scripts the agent started in sessions of
    their own are not in the agent's group, and an agent leaves running scripts
    alone when it stops."""
    pids = marked_pids(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


# --- the demo ------------------------------------------------------------------------


def _ridgeline_command() -> str:
    """How a user runs ``ridgeline`` here: this installation's script, shortened
    to a relative path when it is under the current directory."""
    script = Path(sys.executable).parent / "ridgeline"
    if not script.exists():
        return shutil.which("ridgeline") or "ridgeline"
    try:
        rel = script.relative_to(Path.cwd())
        return str(rel)
    except ValueError:
        return str(script)


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic):
        self.args = args
        self.out = out
        self.clock = clock
        self.display = Display(out, tty)
        self.steps = make_steps()
        for spec in args.expect or ():
            label, state = spec
            next(s for s in self.steps if s.label == label).expect_state = state
        self.by_label = {s.label: s for s in self.steps}
        self.by_id: dict[int, Step] = {}
        self.types: dict[int, str] = {}
        self.seen_events: set[int] = set()
        self.dir: Path | None = None
        self.procs: Processes | None = None
        self.api: ApiClient | None = None
        self.url = ""
        self.deadline = 0.0
        self.started = 0.0
        self.outcome: int | None = None  # the exit status, once the summary is printed

    def say(self, message: str) -> None:
        self.display.note(message)

    # -- setting up --

    def make_dir(self) -> Path:
        if self.args.data_dir:
            path = Path(self.args.data_dir).absolute()
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise DemoError(f"--data-dir {self.args.data_dir}: exists and is not an empty directory; "
                                "the demo needs a fresh one")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path.cwd() / f"ridgeline-demo-{stamp}"
            n = 1
            while path.exists():
                n += 1
                path = Path.cwd() / f"ridgeline-demo-{stamp}-{n}"
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise DemoError(f"cannot create the data directory {path}: {e.strerror or e}") from None
        return path

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return path

    def start_server(self) -> None:
        port_file = self.dir / "server.port"
        self.procs.start("server", [
            sys.executable, "-m", "ridgeline", "server", "--data-dir", str(self.dir / "server"),
            "--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(port_file),
            "--queue", "db", "--job-handler", "--registration-key-file", str(self.dir / "registration-key"),
            "--job-grace", "2",
        ], self.dir / "server.log")
        while not port_file.exists():
            self.procs.check_alive()
            self._check_deadline("the server to listen")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        self.url = f"http://127.0.0.1:{port}"

    def write_agent_config(self, user: str) -> Path:
        from agent.config import KEYS, make_config

        values = {
            "url": f"{self.url}/message-system",
            "computer_title": f"{socket.gethostname()} (demo)",
            "registration_key": self.registration_key,
            "data_path": str(self.dir / "agent"),
            "exchange_interval": "1",
            "urgent_exchange_interval": "1",
            "ping_interval": "1",
            "script_users": user,
            "script_tempdir": str(self.dir / "scripts"),
        }
        make_config(values)  # the agent's own validation: a mistake here is the demo's bug
        (self.dir / "scripts").mkdir(mode=0o755)
        path = self.dir / "agent.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the registration key
        with os.fdopen(fd, "w") as f:
            f.write("[agent]\n" + "".join(f"{k} = {values[k]}\n" for k in KEYS if k in values))
        return path

    def create_api_key(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ridgeline", "api-key", "create", "--name", "demo",
             "--data-dir", str(self.dir / "server")],
            capture_output=True, text=True, timeout=max(5.0, self.deadline - self.clock()),
            env={k: v for k, v in os.environ.items() if k != "RIDGELINE_CONFIG"},
        )
        key = done.stdout.strip()
        if done.returncode != 0 or not key:
            raise DemoError(f"ridgeline api-key create failed: {done.stderr.strip() or done.returncode}")
        self._secret_file("api-key", key)
        return key

    def wait_for_computer(self) -> int:
        while True:
            self.procs.check_alive()
            self._check_deadline("the agent to register")
            computers = self.api.get("/computers", limit=10)["results"]
            if computers:
                c = computers[0]
                if c["status"] != "accepted":
                    raise DemoError(f"the agent registered but computer {c['id']} is {c['status']}, not accepted")
                return c["id"]
            time.sleep(0.2)

    def _check_deadline(self, what: str) -> None:
        if self.clock() > self.deadline:
            raise DemoError(f"timed out after {self.args.timeout:g} s waiting for {what}")

    # -- the activities --

    def request(self, step: Step, computer_id: int, user: str) -> None:
        body = request_body(step, computer_id=computer_id, user=user, marker=str(self.dir), steps=self.by_label,
                            now=dt.datetime.now(dt.timezone.utc))
        a = self.api.post("/activities", body)
        step.id, step.activity, step.created_at = a["id"], a, self.clock()
        self.by_id[a["id"]] = step
        self.types[a["id"]] = a["type"]
        extra = ""
        if "deliver_after" in body:
            extra = f", not before {_local_time(body['deliver_after'])}"
        elif "wait_for" in body:
            extra = f", after activity {body['wait_for']['activity_id']} succeeds"
        elif body.get("requires_approval"):
            extra = ", once approved"
        self.say(f"asked for activity {a['id']} ({a['type']}): {step.summary}{extra}")

    def poll(self) -> None:
        """One look at the server: new transitions, every activity's state, and the
        demo's own moves (approve, cancel) when their time has come."""
        self.procs.check_alive()
        events = self.api.get("/events", after=self.since, limit=1000)["results"]
        for e in sorted(events, key=lambda e: e["id"]):
            if e["id"] in self.seen_events:
                continue
            self.seen_events.add(e["id"])
            step = self.by_id.get(e["activity_id"])
            if e["event"] == "transition" and step is not None:
                step.path.append(e["to_state"])
            if e["event"] == "transition":
                self.display.transition(e, step, self.types.get(e["activity_id"], "?"))
        for a in self.api.get("/activities", limit=100)["results"]:
            step = self.by_id.get(a["id"])
            if step is not None:
                step.activity = a
        self.act()
        self.display.table(self.steps, self.clock() - self.started)

    def act(self) -> None:
        now = self.clock()
        approval = self.by_label["approval"]
        a = approval.activity
        if (a and not approval.acted and a["state"] == "blocked" and a.get("blocked_reason") == "approval"
                and now - approval.created_at >= APPROVE_AFTER):
            approval.acted = True
            self.say(f"approving activity {approval.id}")
            self._verb(approval, "approve")
        cancel = self.by_label["cancel"]
        a = cancel.activity
        if a and a["state"] == "in-progress" and cancel.in_progress_since is None:
            cancel.in_progress_since = now
        if (a and not cancel.acted and a["state"] == "in-progress"
                and now - cancel.in_progress_since >= CANCEL_AFTER):
            cancel.acted = True
            self.say(f"canceling activity {cancel.id} while it runs")
            self._verb(cancel, "cancel")

    def _verb(self, step: Step, verb: str) -> None:
        try:
            step.activity = self.api.post(f"/activities/{step.id}/{verb}", {"reason": "the demo"})
        except CliError as e:
            # Not fatal: the check at the end says how the activity ended.
            self.say(f"could not {verb} activity {step.id}: {e}")

    def follow(self) -> None:
        while not all(s.final for s in self.steps):
            if self.clock() > self.deadline:
                self.poll()  # the latest states, for the report
                return
            time.sleep(POLL_INTERVAL)
            self.poll()
        self.poll()  # the last transitions (cancel confirmed, ...)

    def read_report(self) -> None:
        step = self.by_label["report"]
        if not step.final or step.activity["state"] != "succeeded":
            return
        try:
            listing = self.api.get(f"/activities/{step.id}/output")
            names = [o["name"] for o in (listing.get("outputs") if isinstance(listing, dict) else None) or []]
            if "activities.csv" not in names:
                step.output_error = f"GET /activities/{step.id}/output lists {names or 'nothing'}"
                return
            step.output = self.api.request("GET", f"/activities/{step.id}/output/activities.csv", raw=True)
        except CliError as e:
            step.output_error = str(e)

    # -- the end --

    def summary(self) -> list[str]:
        self.display.done()
        w = self.out.write
        w("\nHow each activity ended:\n")
        problems: list[str] = []
        for s in self.steps:
            a = s.activity or {}
            found = problems_of(s, self.by_label)
            problems += found
            verdict = "ok" if not found else "NOT AS EXPECTED"
            state = state_label(a) if a else "never created"
            result = f" ({a['result_name']})" if a.get("result_name") not in (None, a.get("state")) else ""
            w(f"  activity {s.id or '-'} {s.label}: {state}{result} -- expected {s.expect_state}"
              f"{' (' + s.expect_result + ')' if s.expect_result else ''}: {verdict}\n")
            if s.path:
                w(f"    states: {' → '.join(s.path)}\n")
            text = a.get("result_text")
            if s.label == "report" and s.output:
                rows = s.output.decode("utf-8", "replace").splitlines()
                text = (text or "") + f"\nactivities.csv: {len(rows) - 1} rows; first line: {rows[0]}"
            for line in trimmed(text) if a else []:
                w(f"    | {line}\n")
        self.out.flush()
        return problems

    def look_around(self, live: bool) -> None:
        rl = _ridgeline_command()
        key = shlex.quote(str(self.dir / "api-key"))
        d = shlex.quote(str(self.dir))
        report = self.by_label["report"].id
        w = self.out.write
        w(f"\nThe demo's data (server database, agent state, logs, API key) is in {d}\n")
        if live:
            url = self.url
            w(f"The server ({url}) and the agent are still running; Ctrl-C stops them. Look around with:\n")
        else:
            url = "http://127.0.0.1:8080"
            w("Everything the demo started has been stopped. To look around, start the server on that data\n"
              "again (in another terminal; `ridgeline demo --keep-running` leaves it all running instead):\n"
              f"  {rl} server --data-dir {shlex.quote(str(self.dir / 'server'))}\n"
              "and then:\n")
        common = f"--url {url} --api-key-file {key}"
        first = self.steps[0].id
        for cmd in (f"activities list {common}", f"activities show {first} {common}",
                    f"activities output {report} activities.csv {common}", f"events {common}",
                    f"computers list {common}"):
            w(f"  {rl} {cmd}\n")
        w(f"Logs: {d}/server.log, {d}/agent.log\n")
        self.out.flush()

    def run(self) -> int:
        self.started = self.clock()
        self.deadline = self.started + self.args.timeout
        self.since = _utc(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
        self.dir = self.make_dir()
        self.procs = Processes(str(self.dir))
        user = _current_user()
        w = self.say
        w(f"Ridgeline demo: a server and one agent on this machine, in {self.dir}")
        try:
            self.registration_key = secrets.token_urlsafe(24)
            self._secret_file("registration-key", self.registration_key)
            w("starting the server (SQLite, db queue, in-process job-handler) ...")
            self.start_server()
            w(f"server listening on {self.url}; starting the agent (scripts run as {user!r}) ...")
            self.write_agent_config(user)
            self.procs.start("agent", [sys.executable, "-m", "ridgeline", "agent", "--config",
                                       str(self.dir / "agent.conf")], self.dir / "agent.log")
            self.api = ApiClient(self.url, self.create_api_key(), timeout=10)
            computer = self.wait_for_computer()
            w(f"the agent registered as computer {computer} and was accepted (registration key)")
            for step in self.steps:
                self.request(step, computer, user)
            self.follow()
            self.read_report()
            problems = self.summary()
            if problems:
                self.out.write("\nThe demo FAILED:\n" + "".join(f"  - {p}\n" for p in problems))
            else:
                took = self.clock() - self.started
                self.out.write(f"\nAll {len(self.steps)} activities ended as expected ({took:.1f} s).\n")
            self.outcome = 1 if problems else 0
            self.look_around(live=self.args.keep_running)
            if self.args.keep_running:
                while True:
                    self.procs.check_alive()
                    time.sleep(0.5)
            return self.outcome
        finally:
            self.display.done()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# --- command line --------------------------------------------------------------------


def _expect(value: str) -> tuple[str, str]:
    label, _, state = value.partition("=")
    labels = [s.label for s in make_steps()]
    if label not in labels or state not in STATES:
        raise argparse.ArgumentTypeError(f"expected LABEL=STATE with LABEL one of {', '.join(labels)} "
                                         f"and STATE one of {', '.join(STATES)}")
    return label, state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where to put the demo's data (a new or empty directory; default: "
                             "./ridgeline-demo-<date>-<time>)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the server and the agent running at the end, until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="give up when the activities have not all ended after S seconds (default: 60)")
    # For the demo's own tests: make one activity's expected end a wrong one.
    parser.add_argument("--expect", type=_expect, action="append", help=argparse.SUPPRESS)


def _raise_interrupted(signum, frame):
    raise Interrupted()


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.timeout <= 0:
        print("ridgeline demo: error: --timeout must be more than 0 seconds", file=sys.stderr)
        return 2
    demo = Demo(args, out, tty=out.isatty() and os.environ.get("TERM") != "dumb")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    old_int = signal.signal(signal.SIGINT, _raise_interrupted)
    code = 1
    try:
        code = demo.run()
    except Interrupted:
        # After the summary (--keep-running), Ctrl-C is the normal way out.
        code = demo.outcome if demo.outcome is not None else 130
        out.write("\ninterrupted; stopping everything the demo started ...\n")
    except DemoError as e:
        print(f"ridgeline demo: error: {e}", file=sys.stderr)
        code = 1
    except CliError as e:
        print(f"ridgeline demo: error: {e}", file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if demo.procs is not None:
                demo.procs.stop_all()
                out.write(f"stopped the demo's processes; its data is in {demo.dir}\n")
                out.flush()
        finally:
            # Drop the Ctrl-Cs that came during the cleanup: it is done.
            while signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 0) is not None:
                pass
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return code
