"""Real Ridgeline processes for the end-to-end tests: servers, agents and
job-handlers started as subprocesses on loopback, and always stopped again.

Each child leads a session of its own (so a signal to its group reaches only it
and what it started) and gets SIGTERM if the test process dies (PR_SET_PDEATHSIG).
Scripts that agents run live in sessions of their own, out of reach of the
agent's group; every script a test asks for carries ``RIDGELINE_E2E=<marker>`` in
its environment (the ``env`` parameter), so :meth:`Processes.stop_all` finds and
kills whatever is left, and a test can assert that nothing is.

Everything here is synchronous (``subprocess``, ``urllib`` through the admin
CLI's :class:`~ridgeline.admin.client.ApiClient`) and polls with deadlines, so a
slow, loaded machine makes the tests slower, not flaky.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pytest

from ridgeline.admin.client import ApiClient, CliError

#: The variable that marks every script a test asks for (value: the test's marker).
MARKER = "RIDGELINE_E2E"
FINAL_STATES = ("succeeded", "failed", "canceled")
#: Default deadline of every wait: generous, so a loaded 2-core machine passes.
DEADLINE = 60.0
STOP_GRACE = 15.0

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_until(check: Callable[[], T], what: str, timeout: float = DEADLINE, interval: float = 0.2,
               alive: Callable[[], None] | None = None) -> T:
    """Call ``check`` until it returns something true and return that; fail the
    test naming ``what`` after ``timeout`` seconds. ``alive`` is called on every
    round and raises when a process the wait depends on has died."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _child_setup() -> None:
    """In the child: a session of its own, and SIGTERM when the test process dies."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: nobody may reap it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds ``RIDGELINE_E2E=<marker>``."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


class Child:
    """One started process, its log file, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=_child_setup, close_fds=True)
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the {self.name} exited with status {self.proc.returncode}; "
                                 f"its log ends:\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group: a crash, as the OS does it)."""
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=STOP_GRACE)
        self._log.close()

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM to its group, SIGKILL after ``grace``; the exit status."""
        pgid = self.proc.pid  # a session leader: its pid is its group's id
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        self._log.close()
        return code


class Processes:
    """Every process one test started; :meth:`stop_all` (a fixture finalizer)
    stops them in reverse order and kills marked leftovers."""

    def __init__(self, root: Path, marker: str, env: dict[str, str] | None = None):
        self.root = root
        self.marker = marker
        self.children: list[Child] = []
        self.env = dict(os.environ)
        self.env.pop("RIDGELINE_CONFIG", None)
        for key in [k for k in self.env if k.startswith("RIDGELINE_")]:
            del self.env[key]  # nothing from the outer environment configures the children
        self.env.update(env or {})

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        n = sum(1 for c in self.children if c.name == name)
        log = self.root / f"{name.replace(' ', '-')}{'.' + str(n) if n else ''}.log"
        child = Child(name, argv, log, dict(self.env, **(env or {})))
        self.children.append(child)
        return child

    def run(self, argv: list[str], timeout: float = DEADLINE) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    def leftovers(self) -> list[int]:
        """Script processes of this test still running (the children themselves are not marked)."""
        return marked_pids(self.marker)

    def log_problems(self) -> list[str]:
        """Lines of the children's logs that show a bug: a traceback or a critical event."""
        found = []
        for child in self.children:
            try:
                text = child.log_path.read_text(errors="replace")
            except OSError:
                continue
            found += [f"{child.log_path.name}: {line}" for line in text.splitlines()
                      if line.startswith("Traceback") or "#critical]" in line]
        return found

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.proc.returncode is None or not child._log.closed:
                child.stop()
        # Twice: a script being launched while its agent stopped appears a moment later.
        for _ in range(2):
            for pid in marked_pids(self.marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)


def ridgeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "ridgeline", *args]


class Server:
    """A ``ridgeline server`` process on 127.0.0.1 with its REST client."""

    def __init__(self, procs: Processes, name: str, *, data_dir: Path, registration_key: str,
                 database_url: str | None = None, queue: str = "db", job_handler: bool = True,
                 extra: Iterable[str] = (), tls: Any = None):
        self.procs = procs
        #: A ``certs.ServerTLS``: listen with ``ssl:`` and talk https trusting its CA.
        self.tls = tls
        self.name = name
        self.data_dir = data_dir
        self.database_url = database_url
        self.queue = queue
        self.job_handler = job_handler
        self.extra = list(extra)
        self.key_file = procs.root / f"{name}.registration-key"
        self.key_file.write_text(registration_key + "\n")
        self.child: Child | None = None
        self.port: int | None = None
        self._api_key: str | None = None

    def database_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database", self.database_url]
        return args

    def start(self, port: int | None = None) -> "Server":
        """Start on ``port`` (the same one again after a restart) or a free one."""
        port = self.port if port is None else port
        port_file = self.procs.root / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        listen = self.tls.listen(port or 0) if self.tls else f"tcp:{port or 0}:interface=127.0.0.1"
        argv = ridgeline("server", *self.database_args(), "--listen", listen,
                         "--port-file", str(port_file), "--queue", self.queue,
                         "--job-handler" if self.job_handler else "--no-job-handler",
                         "--registration-key-file", str(self.key_file), "--job-grace", "2", *self.extra)
        self.child = self.procs.start(self.name, argv)
        text = wait_until(lambda: port_file.exists() and port_file.read_text().strip(),
                          f"the {self.name} to listen", alive=self.child.check_alive, interval=0.05)
        self.port = int(text)
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def message_system_url(self) -> str:
        return f"{self.url}/message-system"

    def stop(self) -> int:
        return self.child.stop()

    def api(self) -> ApiClient:
        if self._api_key is None:
            done = self.procs.run(ridgeline("api-key", "create", "--name", f"e2e-{self.name}",
                                            *self.database_args()))
            assert done.returncode == 0 and done.stdout.strip(), done.stderr
            self._api_key = done.stdout.strip()
        return ApiClient(self.url, self._api_key, timeout=30, ca_file=str(self.tls.ca) if self.tls else None)


class Agent:
    """A ``ridgeline agent`` process with a data directory and config file of its own."""

    def __init__(self, procs: Processes, name: str, *, url: str, registration_key: str, user: str,
                 exchange_interval: int = 1, urgent_exchange_interval: int = 1, ping_interval: int = 1):
        self.procs = procs
        self.name = name
        self.dir = procs.root / name
        self.dir.mkdir()
        (self.dir / "scripts").mkdir(mode=0o755)
        self.config_path = self.dir / "agent.conf"
        self.values = {
            "url": url,
            "computer_title": name,
            "registration_key": registration_key,
            "data_path": str(self.dir / "data"),
            "exchange_interval": str(exchange_interval),
            "urgent_exchange_interval": str(urgent_exchange_interval),
            "ping_interval": str(ping_interval),
            "script_users": user,
            "script_tempdir": str(self.dir / "scripts"),
        }
        self.write_config()
        self.child: Child | None = None

    def write_config(self, **changes: str) -> None:
        self.values.update(changes)
        self.config_path.write_text("[agent]\n" + "".join(f"{k} = {v}\n" for k, v in self.values.items()))
        self.config_path.chmod(0o600)

    def start(self) -> "Agent":
        self.child = self.procs.start(self.name, ridgeline("agent", "--config", str(self.config_path)))
        return self

    def kill9(self) -> None:
        self.child.kill9()

    def stop(self) -> int:
        return self.child.stop()

    @property
    def store_path(self) -> Path:
        return Path(self.values["data_path"]) / "agent.sqlite"


class JobHandler:
    """A separate ``ridgeline job-handler`` process."""

    def __init__(self, procs: Processes, name: str, *, server: Server):
        self.child = procs.start(name, ridgeline("job-handler", *server.database_args(), "--queue", server.queue,
                                                 "--job-grace", "2"))

    def stop(self) -> int:
        return self.child.stop()


class Cluster:
    """One server and its agents (by name) with the REST client, as the
    module-scoped e2e fixtures share them; ``files`` is a scratch directory for
    what the tests' scripts write."""

    def __init__(self, procs: Processes, server: Server, agents: dict[str, Agent], user: str):
        self.procs = procs
        self.server = server
        self.agents = agents
        self.user = user
        self.api = server.api()
        self.computers = wait_for_computers(self.api, agents, alive=self.alive)
        self.files = procs.root / "files"
        self.files.mkdir()

    def alive(self) -> None:
        self.server.child.check_alive()
        for agent in self.agents.values():
            agent.child.check_alive()

    def script(self, computer: str | list[str], code: str, **fields) -> dict:
        """Ask for ``code`` on the agents named ``computer``; the new activity."""
        names = [computer] if isinstance(computer, str) else computer
        body = script_request([self.computers[n] for n in names], code, user=self.user,
                              marker=self.procs.marker, **fields)
        return self.api.post("/activities", body)

    def final(self, *ids: int, timeout: float = DEADLINE) -> dict[int, dict]:
        return wait_final(self.api, ids, timeout=timeout, alive=self.alive)

    def state(self, activity_id: int) -> dict:
        return get_activity(self.api, activity_id)


C = TypeVar("C", bound=Cluster)


@contextlib.contextmanager
def running_cluster(root: Path, user: str, agent_names: Iterable[str], cls: type[C] = Cluster,
                    **agent_options: Any) -> Iterator[C]:
    """A SQLite server in ``root`` and one agent per name (``agent_options`` go to
    :class:`Agent`), registered and accepted; every process is stopped on exit."""
    skip_unless_linux()
    procs = Processes(root, marker=str(root))
    try:
        key = secrets.token_urlsafe(16)
        server = Server(procs, "server", data_dir=root / "server", registration_key=key).start()
        agents = {name: Agent(procs, name, url=server.message_system_url, registration_key=key, user=user,
                              **agent_options).start()
                  for name in agent_names}
        yield cls(procs, server, agents, user)
    finally:
        procs.stop_all()


# --- the REST API side ---------------------------------------------------------------


def script_request(computer_ids: list[int], code: str, *, user: str, marker: str, summary: str = "e2e",
                   time_limit: int = 60, **fields: Any) -> dict:
    """A ``POST /activities`` body running ``code`` (sh) on ``computer_ids``,
    marked so leftovers can be found."""
    return {"type": "execute-script", "computer_ids": computer_ids, "summary": summary,
            "parameters": {"code": code, "username": user, "time_limit": time_limit, "env": {MARKER: marker}},
            **fields}


def wait_for_computers(api: ApiClient, titles: Iterable[str], alive: Callable[[], None] | None = None,
                       ) -> dict[str, int]:
    """Ids of the computers with these titles, once all registered and accepted."""
    wanted = set(titles)

    def found():
        rows = api.get("/computers", limit=1000)["results"]
        have = {c["title"]: c for c in rows if c["title"] in wanted}
        if set(have) != wanted:
            return None
        pending = [c for c in have.values() if c["status"] != "accepted"]
        assert not pending, f"computers registered but not accepted: {pending}"
        return {t: c["id"] for t, c in have.items()}

    return wait_until(found, f"agents {sorted(wanted)} to register", alive=alive)


def get_activity(api: ApiClient, activity_id: int) -> dict:
    """One activity with its history (GET /activities/{id})."""
    return api.get(f"/activities/{activity_id}")


def is_final(a: dict) -> bool:
    return a["state"] in FINAL_STATES and not a.get("cancel_provisional")


def wait_final(api: ApiClient, ids: Iterable[int], timeout: float = DEADLINE,
               alive: Callable[[], None] | None = None) -> dict[int, dict]:
    """Every activity of ``ids`` once all are final (with history)."""
    ids = list(ids)
    latest: dict[int, dict] = {}

    def done():
        for i in ids:
            if i not in latest or not is_final(latest[i]):
                try:
                    latest[i] = get_activity(api, i)
                except CliError:  # a server being restarted; try again
                    return False
                if not is_final(latest[i]):
                    return False
        return True

    try:
        wait_until(done, f"activities {ids} to end", timeout=timeout, alive=alive)
    except Timeout as e:
        states = {i: (latest[i]["state"] if i in latest else "?") for i in ids}
        raise Timeout(f"{e}; states: {states}") from None
    return latest


def final_transitions(activity: dict) -> list[dict]:
    """The history entries that moved ``activity`` into a final state."""
    return [h for h in activity["history"]
            if h.get("event") == "transition" and h.get("to_state") in FINAL_STATES]


def assert_ended_once(activity: dict, state: str, result_name: str | None = None) -> None:
    """``activity`` ended in ``state`` (and ``result_name``), by exactly one transition."""
    brief = {k: activity.get(k) for k in ("id", "state", "result_name", "result_text")}
    assert activity["state"] == state, brief
    if result_name is not None:
        assert activity.get("result_name") == result_name, brief
    finals = final_transitions(activity)
    assert len(finals) == 1 and finals[0]["to_state"] == state, (brief, activity["history"])


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def skip_unless_linux() -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("the end-to-end tests find processes through /proc")
