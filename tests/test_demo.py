"""``ridgeline demo``: the real command as a subprocess (a real server, a real agent,
real scripts), and the pure pieces that decide whether it went right."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ridgeline import demo

LABELS = [s.label for s in demo.make_steps()]
EXPECTED = {"facts": "succeeded", "scheduled": "succeeded", "approval": "succeeded", "wait": "succeeded",
            "time-limit": "failed (time-limit)", "cancel": "canceled", "report": "succeeded"}
# The machine may be busy with other tests: generous, but the demo itself aims at < 30 s.
TIMEOUT = "120"


def start_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    data = tmp_path / "demo-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIDGELINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ridgeline", "demo", "--data-dir", str(data), "--timeout", TIMEOUT, *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    return proc, data


def run_demo(tmp_path: Path, *extra: str) -> tuple[int, str, str, Path]:
    """Run the demo to its end: (exit status, stdout, stderr, data directory); it is
    killed if it outlives the wait, and nothing it printed may be a traceback."""
    proc, data = start_demo(tmp_path, *extra)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in out + err
    return proc.returncode, out, err, data


def leftovers(data: Path) -> list[str]:
    """Processes of that demo still alive: marked scripts, or anything whose
    command line names its data directory (the server, the agent)."""
    found = [f"{pid} (marked)" for pid in demo.marked_pids(str(data))]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def summary_lines(out: str) -> dict[str, str]:
    """``activity N LABEL: STATE ... -- expected ...: ok`` lines by label."""
    lines = {}
    for line in out.splitlines():
        m = re.match(r"^  activity (\d+|-) ([\w-]+): (.*)$", line)
        if m:
            lines[m.group(2)] = m.group(3)
    return lines


# --- end to end ----------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_runs_every_activity_to_its_expected_end(tmp_path):
    code, out, err, data = run_demo(tmp_path)
    assert code == 0, out + err

    # One line per transition (not a terminal): time, id, type, state, step.
    transitions = re.findall(r"^(\d\d:\d\d:\d\d)\s+(\d+)\s+([\w-]+)\s+([\w-]+)\s+([\w-]+)$", out, re.M)
    by_step: dict[str, list[str]] = {}
    for _, _, atype, state, label in transitions:
        by_step.setdefault(label, []).append(state)
        assert atype == ("activity-report" if label == "report" else "execute-script")
    assert by_step["scheduled"][0] == "scheduled"
    assert by_step["approval"][:2] == ["blocked", "queued"]
    assert by_step["wait"][0] == "waiting"
    assert by_step["cancel"][-2:] == ["in-progress", "canceled"]
    assert by_step["time-limit"][-1] == "failed"

    # The final summary: every activity, its end, as expected.
    summary = summary_lines(out)
    assert sorted(summary) == sorted(LABELS)
    for label, line in summary.items():
        assert line.startswith(EXPECTED[label] + " -- expected"), line
        assert line.endswith(": ok"), line
    assert f"hostname: {socket.gethostname()}" in out
    assert f"kernel:   {os.uname().release}" in out
    assert "Filesystem" in out  # df -h /
    assert "Time limit of 2 seconds reached" in out
    assert "All 7 activities ended as expected" in out
    assert not leftovers(data)
    for log in ("server.log", "agent.log"):
        assert "Traceback" not in (data / log).read_text(), log

    # The data directory holds what the demo says, secrets kept private.
    assert f"is in {data}" in out
    assert (data / "api-key").stat().st_mode & 0o077 == 0
    assert (data / "agent.conf").stat().st_mode & 0o077 == 0

    # The commands it prints to look around work, against the server started the way it says.
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith("  ") and " --api-key-file " in line
                or line.startswith("  ") and line.rstrip().endswith(f"server --data-dir {data / 'server'}")]
    server_cmd = next(c for c in commands if c[1] == "server")
    port_file = tmp_path / "port"
    log = open(tmp_path / "look-around-server.log", "w")
    server = subprocess.Popen([*server_cmd, "--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(port_file)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "look-around-server.log").read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"

        def look(cmd: list[str]) -> str:
            cmd = [url if a == "http://127.0.0.1:8080" else a for a in cmd]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (cmd, done.stderr)
            return done.stdout

        outputs = {c[1] + " " + c[2]: look(c) for c in commands if c[1] != "server"}
        listed = outputs["activities list"].splitlines()
        assert len(listed) == 1 + 7 and listed[0].split()[:3] == ["ID", "TYPE", "STATE"]
        assert "hostname:" in outputs["activities show"]
        assert outputs["activities output"].startswith("id,kind,type,state")
        assert "queued → in-progress" in outputs["events --url"]
        assert "accepted" in outputs["computers list"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_says_which_activity_did_not_end_as_expected_and_exits_1(tmp_path):
    code, out, err, data = run_demo(tmp_path, "--expect", "cancel=succeeded")
    assert code == 1, out + err
    assert "The demo FAILED:" in out
    failed = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(failed) == 1 and re.fullmatch(
        r"  - cancel \(activity \d+\): ended canceled, expected succeeded", failed[0]), failed
    summary = summary_lines(out)
    assert summary["cancel"].endswith("NOT AS EXPECTED")
    assert all(summary[label].endswith(": ok") for label in LABELS if label != "cancel")
    assert "All 7 activities" not in out
    assert not leftovers(data)


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_while_scripts_run_stops_every_process_it_started(tmp_path):
    proc, data = start_demo(tmp_path)
    seen = []
    try:
        # Wait until the script to be canceled runs (it sleeps 30 s): a server, an
        # agent and scripts of the agent are alive.
        deadline = time.monotonic() + 180
        while True:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(seen) + proc.stderr.read()
            seen.append(line)
            if re.search(r"\sin-progress\s+cancel$", line):
                break
        deadline = time.monotonic() + 30
        while not any(b"sleep\x0030" in _cmdline(pid) for pid in demo.marked_pids(str(data))):
            assert time.monotonic() < deadline, "the demo's script never ran"
            time.sleep(0.05)
        assert len(leftovers(data)) >= 3  # server, agent, script: the check below means something
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + out + err
    assert "interrupted; stopping everything the demo started" in out
    assert "Traceback" not in out + err
    assert not leftovers(data)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# --- the pure pieces -----------------------------------------------------------------


def finished(label: str, state: str, **fields) -> demo.Step:
    steps = {s.label: s for s in demo.make_steps()}
    step = steps[label]
    step.id = 9
    step.activity = {"id": 9, "type": "execute-script", "state": state, "cancel_provisional": False,
                     "result_name": None, "result_text": "", **fields}
    return step


def test_problems_name_the_activity_its_end_and_the_expected_one():
    steps = {s.label: s for s in demo.make_steps()}
    step = finished("time-limit", "failed", result_name="time-limit")
    assert demo.problems_of(step, steps) == []
    step = finished("time-limit", "failed", result_name="no-handler")
    assert demo.problems_of(step, steps) == ["time-limit (activity 9): result no-handler, expected time-limit"]
    step = finished("cancel", "succeeded")
    assert demo.problems_of(step, steps) == ["cancel (activity 9): ended succeeded, expected canceled"]
    step = finished("cancel", "canceled", cancel_provisional=True)
    assert demo.problems_of(step, steps) == ["cancel (activity 9): did not finish; it is canceled (provisional)"]
    assert demo.problems_of(steps["facts"], steps) == ["facts: was never created"]


def test_facts_must_be_this_machines_and_times_must_hold():
    steps = {s.label: s for s in demo.make_steps()}
    real = f"hostname: {socket.gethostname()}\nkernel:   {os.uname().release}\n"
    assert demo.problems_of(finished("facts", "succeeded", result_text=real), steps) == []
    assert "host name" in demo.problems_of(finished("facts", "succeeded", result_text="kernel " + os.uname().release),
                                           steps)[0]
    # Sub-second times compare as times, not as text.
    ok = finished("scheduled", "succeeded", deliver_after="2030-01-01T00:00:05Z",
                  delivered_at="2030-01-01T00:00:05.25Z")
    assert demo.problems_of(ok, steps) == []
    early = finished("scheduled", "succeeded", deliver_after="2030-01-01T00:00:05Z",
                     delivered_at="2030-01-01T00:00:04.9Z")
    assert "before its time" in demo.problems_of(early, steps)[0]
    steps["facts"].activity = {"id": 1, "completed_at": "2030-01-01T00:00:03Z"}
    assert demo.problems_of(finished("wait", "succeeded", delivered_at="2030-01-01T00:00:04Z"), steps) == []
    assert demo.problems_of(finished("wait", "succeeded", delivered_at="2030-01-01T00:00:02Z"), steps)
    assert demo.problems_of(finished("approval", "succeeded", approved_at=None), steps) == [
        "approval (activity 9): ran without being approved"]


def test_report_output_must_be_readable():
    steps = {s.label: s for s in demo.make_steps()}
    step = finished("report", "succeeded")
    step.output_error = "no such resource (HTTP 404)"
    assert demo.problems_of(step, steps) == ["report (activity 9): its output is not readable: no such resource (HTTP 404)"]
    step.output_error, step.output = None, b"id,kind,type\n1,client,execute-script\n"
    assert demo.problems_of(step, steps) == []


def test_result_text_is_trimmed_for_the_summary():
    assert demo.trimmed("a\nb\n") == ["a", "b"]
    assert demo.trimmed(None) == ["(no result text)"]
    long = demo.trimmed("\n".join(str(i) for i in range(20)) + "\n" + "x" * 300, lines=3, width=10)
    assert long == ["0", "1", "2", "… (18 more lines)"]
    assert demo.trimmed("y" * 300, width=10) == ["y" * 9 + "…"]


def test_expect_option_and_data_dir_checks(tmp_path, capsys):
    assert demo._expect("cancel=succeeded") == ("cancel", "succeeded")
    for bad in ("cancel", "nothing=failed", "cancel=done"):
        with pytest.raises(argparse.ArgumentTypeError):
            demo._expect(bad)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path / "busy")])
    assert demo.run(args) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["file"]
    assert demo.run(parser.parse_args(["--timeout", "0"])) == 2
