"""The execute-script plugin, with real processes on the real reactor.

The context is a small fake (it is the plugin's input, built by the agent core);
everything else is real: the launcher, the script, its user, its process group.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from agent.procs import process_start_time
from plugins._process import LAUNCHER
from plugins.scripts import TRUNCATION_MARKER, OutputBuffer, ScriptExecutionPlugin
from protocol import codes

from scripts_support import FakeContext, alive, finish, message, needs_root, run, wait_for_file

NOBODY = pwd.getpwnam("nobody")


# --- hooks ------------------------------------------------------------------------


def test_declares_execute_script():
    assert ScriptExecutionPlugin(global_reactor).ridgeline_agent_message_types() == [
        "execute-script"
    ]


def test_other_message_types_are_not_handled(plugin, tempdir):
    assert plugin.ridgeline_agent_handle({"type": "shutdown"}, FakeContext(tempdir)) is None


def test_cancel_of_unknown_operation_returns_none(plugin):
    assert plugin.ridgeline_agent_cancel(12345) is None


# --- output -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_success_reports_output(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message("echo hello; echo world"))
    assert (result.status, result.result_code) == (codes.SUCCEEDED, None)
    assert result.result_text == "hello\nworld\n"
    assert list(tempdir.iterdir()) == [], "the script file is removed afterwards"


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_are_merged_in_arrival_order(plugin, tempdir):
    code = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf tail >&2"
    result = await run(plugin, FakeContext(tempdir), message(code))
    assert result.result_text == "out1\nerr1\nout2\nerr2\ntail"


@pytest_twisted.ensureDeferred
async def test_non_zero_exit_fails_with_status_line(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message("echo partial; printf more; exit 3"))
    assert (result.status, result.result_code) == (codes.FAILED, codes.SCRIPT_FAILED)
    assert result.result_text == "partial\nmore\nExit status 3."


@pytest_twisted.ensureDeferred
async def test_death_by_signal_fails_naming_the_signal(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message("echo before; kill -KILL $$"))
    assert (result.status, result.result_code) == (codes.FAILED, codes.SCRIPT_FAILED)
    assert result.result_text == "before\nKilled by signal 9 (SIGKILL)."


@pytest_twisted.ensureDeferred
async def test_output_is_capped_with_marker(plugin, tempdir):
    ctx = FakeContext(tempdir, output_limit=1)
    result = await run(plugin, ctx, message("head -c 5000 /dev/zero | tr '\\0' a; echo; exit 0"))
    assert result.status == codes.SUCCEEDED
    assert result.result_text.endswith(TRUNCATION_MARKER)
    assert len(result.result_text.encode()) == 1024
    assert set(result.result_text[: -len(TRUNCATION_MARKER)]) == {"a"}


@pytest_twisted.ensureDeferred
async def test_large_output_past_the_cap_does_not_block_the_script(plugin, tempdir):
    # 4 MiB is far more than a pipe holds: the script only finishes if the
    # plugin keeps reading after the cap.
    ctx = FakeContext(tempdir, output_limit=1)
    result = await run(plugin, ctx, message("head -c 4194304 /dev/zero; echo finished >&2"))
    assert result.status == codes.SUCCEEDED
    assert result.result_text.endswith(TRUNCATION_MARKER)


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_is_replaced(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message(r"printf 'a\377\376b\n'"))
    assert result.result_text == "a\ufffd\ufffdb\n"


def test_cap_never_splits_a_character():
    out = OutputBuffer(1024)
    out.feed("é".encode() * 1000)
    text = out.text()
    assert text.endswith(TRUNCATION_MARKER)
    body = text[: -len(TRUNCATION_MARKER)]
    assert set(body) == {"é"} and len(text.encode()) <= 1024


# --- refusals ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_user_is_allowed_by_default(plugin, tempdir):
    ctx = FakeContext(tempdir, script_users=())
    result = await run(plugin, ctx, message("echo no"))
    assert (result.status, result.result_code) == (codes.FAILED, codes.USER_NOT_ALLOWED)
    assert "cannot be run as user" in result.result_text
    assert ctx.recorded == []


@pytest_twisted.ensureDeferred
async def test_user_not_in_the_list_is_refused(plugin, tempdir):
    ctx = FakeContext(tempdir, script_users=("nobody",))
    result = await run(plugin, ctx, message("echo no", username="root"))
    assert (result.status, result.result_code) == (codes.FAILED, codes.USER_NOT_ALLOWED)
    assert "'root'" in result.result_text


@pytest_twisted.ensureDeferred
async def test_unknown_user(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message("echo", username="no-such-user-x"))
    assert (result.status, result.result_code) == (codes.FAILED, codes.UNKNOWN_USER)
    assert result.result_text == "User 'no-such-user-x' does not exist on this computer."


@pytest.mark.parametrize("interpreter", ["/no/such/python", "/etc/passwd", "sh", ""])
@pytest_twisted.ensureDeferred
async def test_unknown_interpreter(plugin, tempdir, interpreter):
    result = await run(plugin, FakeContext(tempdir), message("echo", interpreter=interpreter))
    assert (result.status, result.result_code) == (codes.FAILED, codes.UNKNOWN_INTERPRETER)
    assert "Failure" not in result.result_text and result.result_text.endswith(".")
    assert list(tempdir.iterdir()) == []


@pytest.mark.parametrize("missing", ["interpreter", "code", "username", "time-limit",
                                     "attachments"])
@pytest_twisted.ensureDeferred
async def test_missing_field_fails_with_a_sentence(plugin, tempdir, missing):
    msg = message("echo")
    del msg[missing]
    result = await run(plugin, FakeContext(tempdir), msg)
    assert (result.status, result.result_code) == (codes.FAILED, None)
    assert result.result_text == f"The execute-script message has no {missing!r} field."


@pytest.mark.parametrize("limit", [-1, 0, "10", True])
@pytest_twisted.ensureDeferred
async def test_bad_time_limit_is_refused(plugin, tempdir, limit):
    result = await run(plugin, FakeContext(tempdir), message("echo", time_limit=limit))
    assert result.status == codes.FAILED
    assert result.result_text.startswith("The time limit must be a positive number")


# --- environment and identity -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_environment_cwd_and_umask(plugin, tempdir, monkeypatch):
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("RIDGELINE_AGENT_SECRET", "must-not-leak")
    me = pwd.getpwuid(os.geteuid())
    code = "env | sort; echo cwd=$(pwd); echo umask=$(umask)"
    result = await run(plugin, FakeContext(tempdir), message(code, env={"GREETING": "hi there"}))
    assert result.status == codes.SUCCEEDED, result.result_text
    lines = result.result_text.splitlines()
    env = dict(line.split("=", 1) for line in lines if not line.startswith(("cwd=", "umask=")))
    # sh itself adds PWD (and may add SHLVL/_): everything else comes from us.
    for own in ("PWD", "SHLVL", "_", "OLDPWD"):
        env.pop(own, None)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin",
        "LANG": "C.UTF-8",
        "USER": me.pw_name,
        "LOGNAME": me.pw_name,
        "HOME": me.pw_dir,
        "GREETING": "hi there",
    }
    expected_cwd = me.pw_dir if os.path.isdir(me.pw_dir) else "/"
    assert f"cwd={expected_cwd}" in lines
    assert "umask=0022" in lines


@pytest_twisted.ensureDeferred
async def test_server_env_can_override_path(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir),
                       message('echo "$PATH"', env={"PATH": "/bin"}))
    assert result.result_text == "/bin\n"


@pytest_twisted.ensureDeferred
async def test_server_env_does_not_reach_the_privileged_launcher(plugin, tempdir):
    # LD_PRELOAD of a missing library makes the dynamic loader complain for
    # every program it starts. The launcher (python) must not see it; the
    # script, which asked for it, does.
    result = await run(plugin, FakeContext(tempdir), message(
        'echo "preload=$LD_PRELOAD"', env={"LD_PRELOAD": "/no/such/lib.so",
                                          "PYTHONPATH": "/no/such/dir"}))
    assert result.status == codes.SUCCEEDED, result.result_text
    *complaints, last = result.result_text.splitlines()
    assert last == "preload=/no/such/lib.so"
    # Exactly one complaint: the script's own /bin/sh; none from the launcher.
    assert len(complaints) == 1 and "/no/such/lib.so" in complaints[0], complaints


@pytest_twisted.ensureDeferred
async def test_script_file_is_private_and_holds_shebang_and_code(plugin, tempdir):
    code = 'stat -c "%a %U" "$0"; cat "$0"'
    result = await run(plugin, FakeContext(tempdir), message(code))
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert result.result_text == f"700 {me}\n#!/bin/sh\n{code}"
    assert list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_interpreter_may_carry_arguments(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir),
                       message("echo one; false; echo not reached", interpreter="/bin/sh -e"))
    assert (result.result_code, result.result_text) == (codes.SCRIPT_FAILED,
                                                        "one\nExit status 1.")


@pytest_twisted.ensureDeferred
async def test_script_inherits_no_ignored_signals(plugin, tempdir):
    # The launcher is Python, which ignores SIGPIPE and SIGXFSZ; an ignored
    # signal survives exec, so the launcher must reset them. Signals the C
    # library reserves for itself (32 and 33 on glibc) cannot be reset by any
    # process and come from whatever started the agent, so they are not counted.
    result = await run(plugin, FakeContext(tempdir), message("grep SigIgn /proc/$$/status"))
    label, mask = result.result_text.split()
    ignored = {n for n in range(1, 65) if int(mask, 16) >> (n - 1) & 1}
    assert label == "SigIgn:"
    assert ignored & {int(s) for s in signal.valid_signals()} == set()


@pytest_twisted.ensureDeferred
async def test_own_session_and_record_process(plugin, tempdir):
    ctx = FakeContext(tempdir)
    code = "echo $$; cut -d' ' -f5,6,22 /proc/$$/stat"
    result = await run(plugin, ctx, message(code))
    pid_line, stat_line = result.result_text.splitlines()
    pid = int(pid_line)
    pgid, sid, start = (int(x) for x in stat_line.split())
    assert pgid == sid == pid, "the script leads its own session and process group"
    assert ctx.recorded == [(pid, start)], "recorded: the real pgid and its start time"
    assert process_start_time(os.getpid()) is not None  # the agent's own reader agrees on units


@pytest.fixture
def agent_groups():
    """Give the test process (the "agent") extra supplementary groups, so that a
    script that merely inherited them would show it."""
    before = os.getgroups()
    os.setgroups([0, 4242, 4343])
    yield [0, 4242, 4343]
    os.setgroups(before)


@needs_root
@pytest_twisted.ensureDeferred
async def test_runs_as_nobody_with_exactly_its_groups(plugin, tempdir, agent_groups):
    ctx = FakeContext(tempdir, script_users=("nobody",))
    code = ('id -u; id -g; id -G; pwd; echo "$HOME $USER $LOGNAME"; stat -c "%a %U" "$0"; '
            "umask")
    result = await run(plugin, ctx, message(code, username="nobody"))
    assert result.status == codes.SUCCEEDED, result.result_text
    groups = sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
    home = NOBODY.pw_dir
    assert result.result_text.splitlines() == [
        str(NOBODY.pw_uid),
        str(NOBODY.pw_gid),
        " ".join(str(g) for g in groups),
        home if os.path.isdir(home) else "/",
        f"{home} nobody nobody",
        "700 nobody",
        "0022",
    ]
    assert set(agent_groups).isdisjoint(groups), "the agent's groups must not leak"


@needs_root
@pytest_twisted.ensureDeferred
async def test_running_as_root_gets_roots_groups_not_the_agents(plugin, tempdir, agent_groups):
    result = await run(plugin, FakeContext(tempdir), message("id -G", username="root"))
    assert result.result_text.split() == [str(g) for g in sorted(os.getgrouplist("root", 0))]


# --- time limit, background children, cancel -------------------------------------


@pytest_twisted.ensureDeferred
async def test_time_limit_kills_the_whole_group(plugin, tempdir, tmp_path):
    pidfile = tmp_path / "pids"
    code = f"sleep 1000 & echo $! > {pidfile}; echo partial; sleep 1000"
    result = await run(plugin, FakeContext(tempdir), message(code, time_limit=1))
    assert (result.status, result.result_code) == (codes.FAILED, codes.TIME_LIMIT)
    assert result.result_text == (
        "partial\nTime limit of 1 second reached: the script was stopped."
    )
    assert not alive(int(pidfile.read_text()))


@pytest_twisted.ensureDeferred
async def test_time_limit_kills_children_that_ignore_sigterm(plugin, tempdir, tmp_path):
    pidfile = tmp_path / "pids"
    code = (f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 1000' & echo $! > {pidfile}; "
            "sleep 1000")
    result = await run(plugin, FakeContext(tempdir), message(code, time_limit=0.5))
    assert result.result_code == codes.TIME_LIMIT
    assert not alive(int(pidfile.read_text()))


@pytest_twisted.ensureDeferred
async def test_background_child_holding_the_pipe_does_not_hang(plugin, tempdir, tmp_path):
    pidfile = tmp_path / "pid"
    code = f"sleep 1000 & echo $! > {pidfile}; echo done"
    result = await run(plugin, FakeContext(tempdir), message(code))
    assert (result.status, result.result_text) == (codes.SUCCEEDED, "done\n")
    assert not alive(int(pidfile.read_text())), "what the script left in its group is stopped"


@pytest_twisted.ensureDeferred
async def test_escaped_child_holding_the_pipe_does_not_hang(plugin, tempdir, tmp_path):
    # setsid leaves the script's group: the plugin cannot (and does not) kill
    # it, but stops reading its pipe after the drain grace.
    pidfile = tmp_path / "pid"
    code = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 1000' & sleep 0.2; echo done"
    try:
        result = await run(plugin, FakeContext(tempdir), message(code))
        assert (result.status, result.result_text) == (codes.SUCCEEDED, "done\n")
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_cancel_stops_the_whole_group_at_once(plugin, tempdir, tmp_path):
    pidfile = tmp_path / "pids"
    ctx = FakeContext(tempdir, operation_id=77)
    code = f"echo started; sleep 1000 & echo $! $$ > {pidfile}; sleep 1000"
    d = plugin.ridgeline_agent_handle(message(code, time_limit=3600), ctx)
    pids = [int(p) for p in (await wait_for_file(pidfile)).split()]
    assert all(alive(p) for p in pids)
    assert plugin.ridgeline_agent_cancel(77) is True
    result = await finish(d)
    assert (result.status, result.result_code) == (codes.FAILED, codes.CANCELED)
    assert result.result_text == "started\nCanceled: the script was stopped."
    assert not any(alive(p) for p in pids)
    assert plugin.ridgeline_agent_cancel(77) is None, "a finished operation is not ours"
    assert list(tempdir.iterdir()) == []


# --- launcher ---------------------------------------------------------------------


def test_launcher_runs_nothing_without_its_spec(tmp_path):
    # What happens when the agent dies after spawning, before sending the spec
    # (that is, before the process was recorded): stdin hits EOF, nothing runs.
    marker = tmp_path / "ran"
    script = tmp_path / "script"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o700)
    for stdin in (b"", b'{"script": "' + str(script).encode()):  # nothing / cut short
        done = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER], input=stdin,
                              capture_output=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (125, b"", b"")
    assert not marker.exists()


@needs_root
@pytest_twisted.ensureDeferred
async def test_script_that_cannot_be_executed_says_why(plugin, tempdir):
    tempdir.chmod(0o700)  # nobody cannot reach the script file
    ctx = FakeContext(tempdir, script_users="ALL")
    result = await run(plugin, ctx, message("echo never", username="nobody"))
    assert (result.status, result.result_code) == (codes.FAILED, None)
    assert result.result_text == "The script could not be started: Permission denied."
    assert len(ctx.recorded) == 1 and list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_missing_script_tempdir_fails_with_a_sentence(plugin, tempdir):
    ctx = FakeContext(tempdir / "missing")
    result = await run(plugin, ctx, message("echo"))
    assert (result.status, result.result_code) == (codes.FAILED, None)
    assert result.result_text.startswith("The script could not be prepared: No such file")
    assert ctx.recorded == []


@pytest_twisted.ensureDeferred
async def test_failing_record_process_runs_nothing(plugin, tempdir, tmp_path):
    marker = tmp_path / "ran"

    class Broken(FakeContext):
        def record_process(self, pgid, start_time):
            raise RuntimeError("database is locked")

    result = await run(plugin, Broken(tempdir), message(f"touch {marker}"))
    assert (result.status, result.result_code) == (codes.FAILED, None)
    assert result.result_text == (
        "The script was not started: its process could not be recorded (database is locked)."
    )
    assert not marker.exists() and list(tempdir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_stdin_is_empty(plugin, tempdir):
    result = await run(plugin, FakeContext(tempdir), message("cat; echo end"))
    assert result.result_text == "end\n"
