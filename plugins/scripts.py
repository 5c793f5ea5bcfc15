"""Built-in plugin: ``execute-script``, run a script the server sends.

Compatible with landscape-client's ``ScriptExecution`` plugin (message fields,
temp file, attachments, result codes 102/103/104), and stricter where that one
is weak:

- no user may run scripts until ``script_users`` says so; refusals carry a plain
  sentence and a result code (``user-not-allowed``, ``unknown-user``,
  ``unknown-interpreter``), never a Failure repr;
- the script runs in its own session and process group, with exactly the
  user's supplementary groups; the time limit and a cancel stop the whole
  group (SIGTERM, then SIGKILL after a grace), not just the direct child;
- stdout and stderr share one pipe, read to the end; a background child that
  keeps the pipe open cannot hang the run: when the script exits, what is left
  of its group is stopped and reading ends after a short grace;
- the result text ends with a line naming the exit status or signal;
- the process group and its start time are recorded (``record_process``)
  before the script runs, so the agent can clean up after a crash.
"""

from __future__ import annotations

import codecs
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

from agent.hookspecs import OperationResult, hookimpl
from agent.httperrors import describe_http_error
from agent.procs import process_start_time
from plugins._process import LAUNCHER, group_alive, signal_group
from protocol import codes

MESSAGE_TYPE = "execute-script"

#: PATH of every script; the server's ``env`` may override it.
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
#: Locale variables passed on from the agent's environment when set.
LOCALE_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE")
#: Appended to output cut at ``script_output_limit``.
TRUNCATION_MARKER = "\n**OUTPUT TRUNCATED**"

_REQUIRED_FIELDS = ("interpreter", "code", "username", "time-limit", "attachments")


class _Refused(Exception):
    """The operation cannot run: carries the FAILED result's text and code."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def _text(value: Any, what: str) -> str:
    """A message field as str (bpickle may hand over bytes)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(f"The {what} is not valid UTF-8.") from None
    if isinstance(value, str):
        return value
    raise _Refused(f"The {what} must be a string, not {type(value).__name__}.")


class OutputBuffer:
    """Collects a script's output up to ``limit`` bytes, discarding the rest.

    Reading continues past the cap (the child would block on a full pipe
    otherwise); only the first bytes are kept. :meth:`text` cuts the output so
    that it, plus :data:`TRUNCATION_MARKER`, fits the limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, len(TRUNCATION_MARKER.encode()))
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self.limit - self._size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def text(self) -> str:
        raw = b"".join(self._chunks)
        if not self.truncated:
            return raw.decode("utf-8", "replace")
        raw = raw[: self.limit - len(TRUNCATION_MARKER.encode())]
        # final=False drops a multi-byte character cut in half at the end
        # instead of turning it into a replacement character.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(raw, final=False) + TRUNCATION_MARKER


class _Signal:
    """A one-shot event any number of coroutines can await."""

    def __init__(self) -> None:
        self.fired = False
        self._waiters: list[Deferred] = []

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred:
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        if self.fired:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d


class _ScriptProtocol(ProcessProtocol):
    """Feeds fds 1 and 2 into the output, fd 3 (launcher errors) aside."""

    def __init__(self, output: OutputBuffer) -> None:
        self.output = output
        self.launch_error = b""
        self.exit_reason: Any = None
        self.exited = _Signal()
        self.output_closed = _Signal()
        self.ended = _Signal()
        self._open_fds = {1, 2, 3}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self.launch_error += data[:4096]
        else:
            self.output.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        self._open_fds.discard(childFD)
        if not self._open_fds:
            self.output_closed.fire()

    def processExited(self, reason) -> None:
        self.exit_reason = reason.value
        self.exited.fire()

    def processEnded(self, reason) -> None:
        self.ended.fire()

    def stop_reading(self) -> None:
        for fd in (1, 2, 3):
            if fd in self._open_fds:
                self.transport.closeChildFD(fd)


@dataclass
class _Run:
    """The state of one running operation, shared with :meth:`cancel`."""

    operation_id: int
    canceled: bool = False
    timed_out: bool = False
    pending: Deferred | None = None  # a download to cancel at once
    pgid: int | None = None  # set once the launcher is spawned
    stopping: _Signal | None = None  # set when the group is being stopped; fires when done


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class ScriptExecutionPlugin:
    """Handles ``execute-script`` messages by running the script as a local user.

    ``reactor`` must provide ``IReactorProcess`` and ``IReactorTime``.
    ``kill_grace`` is how long (seconds) the group gets between SIGTERM and
    SIGKILL; ``drain_grace`` how long output is still read, once the script and
    its group are gone, from a pipe some escaped process keeps open.
    """

    def __init__(self, reactor, *, kill_grace: float = 3.0, drain_grace: float = 1.0) -> None:
        self._reactor = reactor
        self.kill_grace = kill_grace
        self.drain_grace = drain_grace
        self._runs: dict[int, _Run] = {}

    # --- hooks ------------------------------------------------------------------

    @hookimpl
    def ridgeline_agent_message_types(self) -> list[str]:
        """This plugin handles ``execute-script``."""
        return [MESSAGE_TYPE]

    @hookimpl
    def ridgeline_agent_handle(self, message: dict, context) -> Deferred | None:
        """Run the script of an ``execute-script`` message; None for other types.

        The returned Deferred fires with an :class:`OperationResult`; it never
        fails for anything the script or the server's message does.
        """
        kind = message.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode("utf-8", "replace")
        if kind != MESSAGE_TYPE:
            return None
        operation_id = context.operation_id
        if operation_id in self._runs:
            # The core never runs an operation twice; refuse rather than share state.
            return Deferred.fromCoroutine(
                _constant(
                    OperationResult(codes.FAILED, f"Operation {operation_id} is already running.")
                )
            )
        # Registered before returning, so a cancel right after handle() finds it.
        run = _Run(operation_id)
        self._runs[operation_id] = run
        return Deferred.fromCoroutine(self._handle(run, message, context))

    @hookimpl
    def ridgeline_agent_cancel(self, operation_id: int) -> bool | None:
        """Stop operation ``operation_id`` now, with its whole process group.

        Returns True when the operation is one of ours still running; its result
        will be FAILED / ``canceled`` with the output so far. None otherwise.
        """
        run = self._runs.get(operation_id)
        if run is None:
            return None
        run.canceled = True
        self._stop(run)
        return True

    def _stop(self, run: _Run) -> None:
        """Stop the run's process group (once), or its download if not spawned yet."""
        if run.pgid is None:
            if run.pending is not None:
                run.pending.cancel()
            return
        if run.stopping is None:
            run.stopping = _Signal()
            Deferred.fromCoroutine(self._stop_group(run))

    # --- the operation ----------------------------------------------------------

    async def _handle(self, run: _Run, message: dict, context) -> OperationResult:
        try:
            return await self._execute(run, message, context)
        except _Refused as e:
            return OperationResult(codes.FAILED, e.text, e.code)
        except OSError as e:
            # Preparing files: a missing or full script_tempdir, for instance.
            where = f" ({e.filename})" if e.filename else ""
            return OperationResult(
                codes.FAILED, f"The script could not be prepared: {e.strerror or e}{where}."
            )
        except CancelledError:
            return OperationResult(
                codes.FAILED, "Canceled before the script started.", codes.CANCELED
            )
        finally:
            del self._runs[run.operation_id]

    async def _execute(self, run: _Run, message: dict, context) -> OperationResult:
        for name in _REQUIRED_FIELDS:
            if name not in message:
                raise _Refused(f"The execute-script message has no {name!r} field.")
        config = context.config
        username = _text(message["username"], "user name")
        user = _check_user(username, getattr(config, "script_users", ()))
        interpreter = _check_interpreter(_text(message["interpreter"], "interpreter"))
        code = message["code"]
        code_bytes = code if isinstance(code, bytes) else _text(code, "script code").encode()
        time_limit = _check_time_limit(message["time-limit"])
        attachments = _check_attachments(message["attachments"])
        extra_env = _check_env(message.get("env") or {})
        if user.uid != os.geteuid() and os.geteuid() != 0:
            raise _Refused(
                f"The agent runs as an unprivileged user and cannot run scripts as {user.name!r}."
            )

        tempdir = getattr(config, "script_tempdir", None) or None
        limit_kib = getattr(config, "script_output_limit", 512)
        env = _script_environment(user)
        env.update(extra_env)
        attachment_dir = None
        script_path = None
        try:
            if attachments:
                attachment_dir = tempfile.mkdtemp(prefix="ridgeline-attachments-", dir=tempdir)
                _give(attachment_dir, user, 0o700)
                env["LANDSCAPE_ATTACHMENTS"] = attachment_dir
                env["RIDGELINE_ATTACHMENTS"] = attachment_dir
                await self._fetch_attachments(run, attachments, attachment_dir, user, context)
            script_path = _write_script(tempdir, interpreter, code_bytes, user)
            if run.canceled:
                raise CancelledError()
            return await self._run_script(run, script_path, env, user, time_limit, limit_kib,
                                          context)
        finally:
            if script_path is not None:
                _remove(script_path)
            if attachment_dir is not None:
                shutil.rmtree(attachment_dir, ignore_errors=True)

    async def _fetch_attachments(self, run, attachments, directory, user, context) -> None:
        for name, value in attachments.items():
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchown(f.fileno(), user.uid, user.gid)
                if isinstance(value, int):
                    run.pending = Deferred.fromCoroutine(
                        self._download(context, name, value, f)
                    )
                    try:
                        await run.pending
                    except Exception:
                        # A canceled request may surface as a connection error.
                        if run.canceled:
                            raise CancelledError() from None
                        raise
                    finally:
                        run.pending = None
                else:
                    # Inline content: landscape's backward-compatible form.
                    f.write(value if isinstance(value, bytes) else value.encode())

    async def _download(self, context, name: str, attachment_id: int, f) -> None:
        url = context.attachment_url(attachment_id)
        secure_id = context.secure_id
        if isinstance(secure_id, str):
            secure_id = secure_id.encode()
        headers = {
            b"X-Computer-ID": [secure_id],
            b"Content-Type": [b"application/octet-stream"],
            b"User-Agent": [b"ridgeline-agent"],
        }
        what = f"Could not download attachment {name!r} (id {attachment_id})"
        try:
            response = await context.http.get(url, headers=headers)
            if response.code != 200:
                # Read (and drop) the body so the connection can be reused.
                await treq.content(response)
                raise _Refused(
                    f"{what}: the server answered HTTP {response.code}.",
                    codes.ATTACHMENT_DOWNLOAD_FAILED,
                )
            await treq.collect(response, f.write)
        except (_Refused, CancelledError):
            raise
        except Exception as e:
            detail = describe_http_error(e).rstrip(".")
            raise _Refused(f"{what}: {detail}.", codes.ATTACHMENT_DOWNLOAD_FAILED) from None

    async def _run_script(self, run, script_path, env, user, time_limit, limit_kib,
                          context) -> OperationResult:
        output = OutputBuffer(int(limit_kib) * 1024)
        proto = _ScriptProtocol(output)
        try:
            transport = self._reactor.spawnProcess(
                proto,
                sys.executable,
                [sys.executable, "-I", "-S", "-c", LAUNCHER],
                env={},
                path="/",
                childFDs={0: "w", 1: "r", 2: "r", 3: "r"},
            )
        except OSError as e:
            raise _Refused(f"The script could not be started: {e.strerror or e}.") from None
        pid = transport.pid
        run.pgid = pid  # the launcher's setsid makes pgid = pid
        start_time = process_start_time(pid)
        try:
            if start_time is None:
                raise RuntimeError(f"/proc/{pid}/stat could not be read")
            recorded = context.record_process(pid, start_time)
            if recorded is not None and hasattr(recorded, "__await__"):
                await recorded
        except Exception as e:
            # Nothing has run yet: the launcher waits for its spec on stdin.
            await _kill_launcher(transport, proto)
            raise _Refused(f"The script was not started: its process could not be recorded ({e}).")
        if run.canceled:
            await _kill_launcher(transport, proto)
            raise CancelledError()

        spec = {
            "script": script_path,
            "uid": user.uid,
            "gid": user.gid,
            "groups": list(user.groups),
            "home": user.home,
            "env": env,
        }
        transport.write(json.dumps(spec).encode())
        transport.closeStdin()

        timer = None
        if time_limit is not None:
            timer = self._reactor.callLater(time_limit, self._time_limit_reached, run)
        try:
            await proto.exited.wait()
        finally:
            if timer is not None and timer.active():
                timer.cancel()
        # What the script left behind in its group goes too (it also closes the
        # pipe those processes hold). A stop already under way is reused.
        self._stop(run)
        await run.stopping.wait()
        try:
            await proto.output_closed.wait().addTimeout(self.drain_grace, self._reactor)
        except TimeoutError:
            proto.stop_reading()  # held open by a process outside the group
        await proto.ended.wait()
        return _result(run, proto, time_limit)

    def _time_limit_reached(self, run: _Run) -> None:
        run.timed_out = True
        self._stop(run)

    async def _stop_group(self, run: _Run) -> None:
        """SIGTERM the whole group, SIGKILL after ``kill_grace`` if any is left."""
        try:
            if signal_group(run.pgid, signal.SIGTERM):
                deadline = self._reactor.seconds() + self.kill_grace
                while group_alive(run.pgid) and self._reactor.seconds() < deadline:
                    await deferLater(self._reactor, 0.05, lambda: None)
                if group_alive(run.pgid):
                    signal_group(run.pgid, signal.SIGKILL)
        finally:
            run.stopping.fire()


async def _constant(value):
    return value


async def _kill_launcher(transport, proto: _ScriptProtocol) -> None:
    try:
        transport.signalProcess("KILL")
    except ProcessExitedAlready:
        pass
    await proto.ended.wait()


def _check_user(username: str, allowed) -> _User:
    if isinstance(allowed, str) and allowed != "ALL":
        allowed = tuple(n.strip() for n in allowed.split(",") if n.strip())
    if allowed != "ALL" and username not in (allowed or ()):
        raise _Refused(
            f"Scripts cannot be run as user {username!r} on this computer: "
            "the agent's script_users setting does not allow it.",
            codes.USER_NOT_ALLOWED,
        )
    try:
        entry = pwd.getpwnam(username)
    except (KeyError, ValueError):
        raise _Refused(
            f"User {username!r} does not exist on this computer.", codes.UNKNOWN_USER
        ) from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _User(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


def _check_interpreter(interpreter: str) -> str:
    interpreter = interpreter.strip()
    if "\n" in interpreter or "\r" in interpreter or "\0" in interpreter:
        raise _Refused("The interpreter must be a single line.", codes.UNKNOWN_INTERPRETER)
    words = interpreter.split()
    program = words[0] if words else ""
    if not program:
        raise _Refused("The script has no interpreter.", codes.UNKNOWN_INTERPRETER)
    if not os.path.isabs(program):
        raise _Refused(
            f"The interpreter {program!r} is not an absolute path (for example /bin/sh).",
            codes.UNKNOWN_INTERPRETER,
        )
    if not os.path.isfile(program) or not os.access(program, os.X_OK):
        raise _Refused(
            f"The interpreter {program!r} is not an executable file on this computer.",
            codes.UNKNOWN_INTERPRETER,
        )
    return interpreter


def _check_time_limit(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _Refused(f"The time limit must be a positive number of seconds, not {value!r}.")
    return value


def _check_attachments(value) -> dict[str, int | str | bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Refused("The attachments must be a mapping of file names to attachment ids.")
    checked: dict[str, int | str | bytes] = {}
    for raw_name, content in value.items():
        name = _text(raw_name, "attachment name")
        if not name or name in (".", "..") or "/" in name or "\0" in name or ".." in name:
            raise _Refused(f"The attachment name {name!r} is not a plain file name.")
        if isinstance(content, bool) or not isinstance(content, (int, str, bytes)):
            raise _Refused(
                f"The attachment {name!r} must be an attachment id or the file's content."
            )
        checked[name] = content
    return checked


def _check_env(value) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Refused("The script environment (env) must be a mapping of names to values.")
    env = {}
    for raw_key, raw_value in value.items():
        key = _text(raw_key, "environment variable name")
        if not key or "=" in key or "\0" in key:
            raise _Refused(f"{key!r} is not a valid environment variable name.")
        val = _text(raw_value, f"value of environment variable {key}")
        if "\0" in val:
            raise _Refused(f"The value of environment variable {key} contains a NUL character.")
        env[key] = val
    return env


def _script_environment(user: _User) -> dict[str, str]:
    env = {"PATH": SCRIPT_PATH}
    for name in LOCALE_VARIABLES:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(USER=user.name, LOGNAME=user.name, HOME=user.home)
    return env


def _give(path: str, user: _User, mode: int) -> None:
    os.chmod(path, mode)
    if (user.uid, user.gid) != (os.geteuid(), os.getegid()):
        os.chown(path, user.uid, user.gid)


def _write_script(tempdir: str | None, interpreter: str, code: bytes, user: _User) -> str:
    fd, path = tempfile.mkstemp(prefix="ridgeline-script-", dir=tempdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"#!" + interpreter.encode() + b"\n" + code)
        _give(path, user, 0o700)
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _result(run: _Run, proto: _ScriptProtocol, time_limit) -> OperationResult:
    if proto.launch_error:
        reason = proto.launch_error.decode("utf-8", "replace").strip()
        return OperationResult(codes.FAILED, f"The script could not be started: {reason}.")
    text = proto.output.text()

    def with_line(line: str) -> str:
        if text and not text.endswith("\n"):
            return f"{text}\n{line}"
        return text + line

    if run.canceled:
        return OperationResult(
            codes.FAILED, with_line("Canceled: the script was stopped."), codes.CANCELED
        )
    if run.timed_out:
        return OperationResult(
            codes.FAILED,
            with_line(
                f"Time limit of {time_limit:g} second{'' if time_limit == 1 else 's'} reached: "
                "the script was stopped."
            ),
            codes.TIME_LIMIT,
        )
    reason = proto.exit_reason
    if isinstance(reason, ProcessDone):
        return OperationResult(codes.SUCCEEDED, text)
    if isinstance(reason, ProcessTerminated) and reason.signal is not None:
        try:
            name = signal.Signals(reason.signal).name
            line = f"Killed by signal {reason.signal} ({name})."
        except ValueError:
            line = f"Killed by signal {reason.signal}."
    else:
        line = f"Exit status {getattr(reason, 'exitCode', None)}."
    return OperationResult(codes.FAILED, with_line(line), codes.SCRIPT_FAILED)
