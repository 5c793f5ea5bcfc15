"""Server-side configuration: one frozen ``ServerConfig`` and the option parsing
shared by every server-side command (``server``, ``job-handler``, ``db``,
``api-key``).

Each option has one name, used everywhere:

- config file: ``name = value`` in the ``[server]`` section of an INI file given
  by ``--config FILE`` (or ``RIDGELINE_CONFIG``);
- environment: ``RIDGELINE_<NAME>`` (upper case), e.g. ``RIDGELINE_DATABASE_URL``;
- command line: ``--name-with-dashes`` (booleans also as ``--no-name``), for the
  options a command exposes. Secrets (``registration_key``,
  ``database_password``) have no flag, so they never appear in a process list;
  they come from the environment, the file, or ``*_file`` options naming a file
  that holds them.

Precedence: flags > environment > file > defaults. An unknown key in the file, or a
value that does not parse, is a ``ConfigError`` naming the key and where it came
from; commands print it on one line and exit 2.

Usage by a long-running command module::

    def add_arguments(parser):
        config.add_service_options(parser, config.JOB_HANDLER_OPTIONS)

    def run(args):
        return config.run_service("job-handler", args, run_job_handler)

``docs/server.md`` documents every option.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

ENV_PREFIX = "RIDGELINE_"
SECTION = "server"
KiB = 1024
MiB = 1024 * KiB
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_DATA_DIR = "./ridgeline-data"
SQLITE_FILE_NAME = "ridgeline.sqlite"


class ConfigError(Exception):
    """A configuration value is missing, unknown or malformed; the message says which."""


# --- value parsers: text (from a file or the environment) -> value ----------------


def _parse_str(text: str) -> str:
    return text


def _parse_optional_str(text: str) -> str | None:
    return text if text.strip() else None


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_non_negative_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _parse_positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kib": KiB, "kb": 1000, "m": MiB, "mib": MiB, "mb": 1000**2,
               "g": 1024 * MiB, "gib": 1024 * MiB, "gb": 1000**3}


def parse_size(text: str) -> int:
    """``"30MiB"``, ``"10M"`` (binary), ``"500kB"`` (decimal) or plain bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("expected a size such as 1048576, 512KiB, 30MiB or 1GiB")
    value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError("must be a positive size")
    return value


#: Longest duration accepted (100 years): added to today it must stay a valid
#: time, or every expiry, deadline and lease computed with it would fail.
MAX_DURATION = 100 * 365 * 86400
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds: ``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"1w"``, or a sum ``"1h30m"``."""
    t = text.strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw]?)", t)
    if not t or not parts or re.sub(r"(\d+)\s*([smhdw]?)", "", t).strip():
        raise ValueError("expected a duration such as 30, 30s, 15m, 24h or 7d")
    value = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if value <= 0:
        raise ValueError("must be a positive duration")
    if value > MAX_DURATION:
        raise ValueError(f"must be at most {MAX_DURATION // (365 * 86400)} years")
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Empty text means "not set" (None)."""

    def parse_or_none(text: str):
        return None if not text.strip() else parse(text)

    parse_or_none.__name__ = parse.__name__
    return parse_or_none


def _parse_queue_url(text: str) -> str:
    t = text.strip()
    if t == "db" or t.startswith(("amqp://", "amqps://")):
        return t
    raise ValueError('expected "db" or an amqp:// or amqps:// URL')


def _parse_time_limits(text: str) -> tuple[tuple[str, int], ...]:
    limits: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, duration = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected TYPE=DURATION, got {part!r}")
        limits[name.strip()] = parse_duration(duration)
    return tuple(sorted(limits.items()))


def _parse_log_level(text: str) -> str:
    t = text.strip().lower()
    if t not in ("debug", "info", "warn", "error", "critical"):
        raise ValueError("expected one of debug, info, warn, error, critical")
    return t


# --- the options --------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One configuration option: its key, parser, default and documentation."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False  # never a flag, never logged
    boolean: bool = False  # flag pair --name/--no-name
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flags(self) -> tuple[str, ...]:
        return _FLAGS.get(self.name, ("--" + self.name.replace("_", "-"),))

    @property
    def flag(self) -> str:
        return self.flags[0]


OPTIONS: tuple[Option, ...] = (
    # Common to every server-side command.
    Option("data_dir", _parse_str, DEFAULT_DATA_DIR,
           "directory for the default SQLite database and other state (created 0700)", metavar="DIR"),
    Option("database_url", _parse_optional_str, None,
           "SQLAlchemy URL of the database (default: SQLite file <data-dir>/ridgeline.sqlite)",
           metavar="URL"),
    Option("database_password", _parse_optional_str, None,
           "password of the database user, when the URL has none", secret=True),
    Option("database_password_file", _parse_optional_str, None,
           "file holding the database password (its first line)", metavar="PATH"),
    Option("db_threads", _optional(_parse_positive_int), None,
           "threads for database work (default: 1 on SQLite, 8 otherwise)", metavar="N"),
    Option("log_level", _parse_log_level, "info", "lowest level of log events written to stderr",
           metavar="LEVEL"),
    # The server.
    Option("listen", _parse_str, DEFAULT_LISTEN,
           "Twisted server endpoint to listen on (tcp:PORT:interface=ADDR, ssl:...)", metavar="ENDPOINT"),
    Option("port_file", _parse_optional_str, None,
           "write the bound port number to this file once listening", metavar="PATH"),
    Option("migrate", _parse_bool, True,
           "upgrade the database schema at start (--no-migrate: refuse to start on an old schema)",
           boolean=True),
    Option("account_name", _parse_str, "standalone", "account name agents register with", metavar="NAME"),
    Option("registration_key", _parse_optional_str, None,
           "key agents must present to register (none: any agent may register)", secret=True),
    Option("registration_key_file", _parse_optional_str, None,
           "file holding the registration key (its first line)", metavar="PATH"),
    Option("refuse_pending", _parse_bool, False,
           "refuse registrations instead of keeping new computers pending", boolean=True),
    Option("max_body_size", parse_size, 30 * MiB, "largest HTTP request body accepted", metavar="SIZE"),
    Option("attachment_max_size", parse_size, 10 * MiB, "largest attachment accepted", metavar="SIZE"),
    Option("script_max_size", parse_size, 1 * MiB, "largest script code accepted", metavar="SIZE"),
    Option("default_expiry", parse_duration, 7 * 86400,
           "how long undelivered activities wait before they expire", metavar="DURATION"),
    Option("no_answer_deadline", parse_duration, 24 * 3600,
           "how long after delivery an activity without an answer ends failed", metavar="DURATION"),
    Option("scheduler_interval", _parse_positive_int, 1,
           "seconds between the scheduler's passes over due times (expiry, waiting, no-answer, leases)",
           metavar="SECONDS"),
    Option("exchange_interval", _optional(parse_duration), None,
           "exchange interval sent to agents (default: none sent)", metavar="DURATION"),
    Option("urgent_exchange_interval", _optional(parse_duration), None,
           "urgent exchange interval sent to agents (default: none sent)", metavar="DURATION"),
    Option("ping_interval", _optional(parse_duration), None,
           "ping interval sent to agents (default: none sent)", metavar="DURATION"),
    # The queue and the job-handler.
    Option("queue_url", _parse_queue_url, "db", 'queue of server activities: "db" or an amqp:// URL',
           metavar="URL"),
    Option("job_handler", _parse_bool, True,
           "run a job-handler inside the server process (--no-job-handler: separate processes do)",
           boolean=True),
    Option("lease_seconds", parse_duration, 30,
           "how long a job-handler holds a claimed activity before another may take it",
           metavar="DURATION"),
    Option("retry_count", _parse_non_negative_int, 0, "times a failed server activity is retried",
           metavar="N"),
    Option("job_concurrency", _parse_positive_int, 4, "jobs one job-handler runs at once", metavar="N"),
    Option("job_time_limit", parse_duration, 3600,
           "time limit of a job whose type sets none", metavar="DURATION"),
    Option("job_time_limits", _parse_time_limits, (),
           "time limits per job type, e.g. activity-report=10m,purge-activities=2h (override the type's own)",
           metavar="TYPE=DURATION,..."),
    Option("job_grace", parse_duration, 20,
           "how long a canceled job, or running jobs at shutdown, get to stop", metavar="DURATION"),
    Option("job_output_max_size", parse_size, 10 * MiB, "largest total output one job may store",
           metavar="SIZE"),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

# Which flags each command shows. Every command reads every key from the file and
# the environment (one config file serves them all); flags are per command.
COMMON_OPTIONS = ("data_dir", "database_url", "database_password_file", "log_level")
SERVER_OPTIONS = tuple(o.name for o in OPTIONS if not o.secret)
JOB_HANDLER_OPTIONS = COMMON_OPTIONS + ("db_threads", "queue_url", "lease_seconds", "retry_count",
                                        "job_concurrency", "job_time_limit", "job_time_limits", "job_grace",
                                        "job_output_max_size")
# Flag spellings that differ from the option name (the first one is shown).
_FLAGS = {"database_url": ("--database", "--database-url"), "queue_url": ("--queue", "--queue-url"),
          "job_concurrency": ("--concurrency", "--job-concurrency")}


@dataclass(frozen=True)
class ServerConfig:
    """Every server-side setting, resolved. Sizes are bytes, durations seconds."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str | None = None
    database_password: str | None = None
    db_threads: int | None = None
    log_level: str = "info"
    listen: str = DEFAULT_LISTEN
    port_file: Path | None = None
    migrate: bool = True
    account_name: str = "standalone"
    registration_key: str | None = None
    refuse_pending: bool = False
    max_body_size: int = 30 * MiB
    attachment_max_size: int = 10 * MiB
    script_max_size: int = 1 * MiB
    default_expiry: int = 7 * 86400
    no_answer_deadline: int = 24 * 3600
    scheduler_interval: int = 1
    exchange_interval: int | None = None
    urgent_exchange_interval: int | None = None
    ping_interval: int | None = None
    queue_url: str = "db"
    job_handler: bool = True
    lease_seconds: int = 30
    retry_count: int = 0
    job_concurrency: int = 4
    job_time_limit: int = 3600
    job_time_limits: tuple[tuple[str, int], ...] = ()
    job_grace: int = 20
    job_output_max_size: int = 10 * MiB

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("database_password", "registration_key"):
            if shown[name] is not None:
                shown[name] = "***"
        shown["database_url"] = self.database_url_display
        return "ServerConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def uses_default_database(self) -> bool:
        return self.database_url is None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / SQLITE_FILE_NAME

    @property
    def effective_database_url(self) -> str:
        """The URL to connect to, with the password filled in (never log it)."""
        if self.database_url is None:
            return f"sqlite:///{self.sqlite_path.absolute()}"
        if self.database_password is None:
            return self.database_url
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        if url.password is None:
            url = url.set(password=self.database_password)
        return url.render_as_string(hide_password=False)

    @property
    def database_url_display(self) -> str:
        """The URL for messages: the password hidden."""
        url = self.effective_database_url
        if url.startswith("sqlite"):
            return url
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def database_threads(self) -> int:
        """SQLite allows one writer at a time: one thread avoids lock waits."""
        if self.db_threads is not None:
            return self.db_threads
        return 1 if self.is_sqlite else 8


# --- argparse ------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, names: Iterable[str] = COMMON_OPTIONS) -> None:
    """Add ``--config`` and the flags of ``names`` to a command's parser.

    Flags default to "not given" (absent from the namespace), so ``load`` can tell
    a flag from a default and apply the precedence.
    """
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"INI file with a [{SECTION}] section (also {ENV_PREFIX}CONFIG)")
    for name in names:
        opt = OPTIONS_BY_NAME[name]
        if opt.secret:
            raise ValueError(f"{name} is a secret and has no command-line flag")
        flags = opt.flags
        if opt.boolean:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=opt.help)
        else:
            parser.add_argument(*flags, dest=name, metavar=opt.metavar, default=argparse.SUPPRESS,
                                help=f"{opt.help} (env {opt.env})")


def add_service_options(parser: argparse.ArgumentParser, names: Iterable[str], *,
                        secrets: Iterable[str] = ()) -> None:
    """``add_options`` for a long-running command (``server``, ``job-handler``),
    with an epilog saying where else options are set, and that ``secrets`` are
    set only there."""
    secrets = ", ".join(secrets)
    only_there = f"; secrets ({secrets}) only there" if secrets else ""
    parser.epilog = (
        "Every option can also be set in the config file ([server] section) or as "
        f"RIDGELINE_<OPTION> in the environment{only_there}. See docs/server.md."
    )
    add_options(parser, names)


def run_service(command: str, args: argparse.Namespace | Mapping[str, Any],
                main: Callable[[ServerConfig], int],
                check: Callable[[ServerConfig], None] | None = None) -> int:
    """The start of a long-running command: load the configuration and ``check``
    it (a ``ConfigError`` from either is one line and exit 2, before anything is
    touched), start logging at its level, and return ``main(config)``'s exit status."""
    try:
        cfg = load(args)
        if check is not None:
            check(cfg)
    except ConfigError as e:
        return report_error(command, e)
    from server import logsetup

    logsetup.start_logging(cfg.log_level)
    return main(cfg)


def _read_file(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except configparser.Error as e:
        raise ConfigError(f"config file {path} is not a valid INI file: {e.message.splitlines()[0]}") from None
    for section in parser.sections():
        if section != SECTION:
            raise ConfigError(f"config file {path}: unknown section [{section}] (expected [{SECTION}])")
    if not parser.has_section(SECTION):
        return {}
    values = dict(parser.items(SECTION))
    for key in values:
        if key not in OPTIONS_BY_NAME:
            raise ConfigError(f"config file {path}: unknown option {key!r} in [{SECTION}]")
    return values


def _read_secret_file(option: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {path}: {e.strerror}") from None
    value = text.splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise ConfigError(f"{option}: {path} is empty")
    return value


def load(args: argparse.Namespace | Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Resolve a ``ServerConfig`` from flags > environment > file > defaults.

    ``args`` is the parsed namespace of a parser set up by ``add_options`` (flag
    values are still text). ``environ`` defaults to ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    flags = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG") or None

    raw: dict[str, tuple[str, Any]] = {}  # name -> (where, text or value)
    if config_path:
        for key, text in _read_file(config_path).items():
            raw[key] = (f"config file {config_path}", text)
    for opt in OPTIONS:
        if opt.env in environ:
            raw[opt.name] = (f"environment variable {opt.env}", environ[opt.env])
    for name, value in flags.items():
        if name in OPTIONS_BY_NAME:
            raw[name] = (f"option {OPTIONS_BY_NAME[name].flag}", value)

    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    for name, (where, value) in raw.items():
        opt = OPTIONS_BY_NAME[name]
        if not isinstance(value, str):  # BooleanOptionalAction gives a bool
            values[name] = value
            continue
        try:
            values[name] = opt.parse(value)
        except ValueError as e:
            detail = str(e) if not str(e).startswith("invalid literal") else "expected a whole number"
            raise ConfigError(f"{name} ({where}): bad value {_show(opt, value)}: {detail}") from None

    for secret, file_option in (("database_password", "database_password_file"),
                                ("registration_key", "registration_key_file")):
        path = values.pop(file_option)
        if path is not None:
            if secret in raw:
                raise ConfigError(f"give either {secret} or {file_option}, not both")
            values[secret] = _read_secret_file(file_option, path)

    values["data_dir"] = Path(values["data_dir"])
    if values["port_file"] is not None:
        values["port_file"] = Path(values["port_file"])
    if not values["listen"].strip():
        raise ConfigError("listen: must not be empty")
    if values["database_url"] is not None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(values["database_url"])
        except ArgumentError:
            raise ConfigError(f"database_url: not a database URL: {values['database_url']!r}") from None
        _check_database_url(url)
    return ServerConfig(**values)


#: The databases Ridgeline runs on, and the driver each needs in the URL.
_DATABASES = {"sqlite": "sqlite:///PATH", "postgresql": "postgresql+psycopg://USER@HOST/DB"}


def _check_database_url(url) -> None:
    """Refuse, as a configuration error, a URL whose database Ridgeline does not
    support or whose driver is not installed (otherwise the first connection
    fails with SQLAlchemy's traceback)."""
    backend = url.get_backend_name()
    if backend not in _DATABASES:
        raise ConfigError(f"database_url: {backend!r} databases are not supported; use "
                          + " or ".join(_DATABASES.values()))
    try:
        url.get_dialect().import_dbapi()
    except Exception:  # NoSuchModuleError (unknown driver) or ImportError (driver not installed)
        raise ConfigError(f"database_url: the driver {url.drivername!r} is not available; use "
                          f"{_DATABASES[backend]}") from None


def _show(opt: Option, value: str) -> str:
    return "(hidden)" if opt.secret else repr(value)


def report_error(command: str, error: ConfigError, stream=None) -> int:
    """Print a configuration error on one line and return the exit code (2)."""
    print(f"ridgeline {command}: configuration error: {error}", file=stream or sys.stderr)
    return 2


def ensure_data_dir(config: ServerConfig) -> None:
    """Create the data directory (owner-only) when the default SQLite file lives there."""
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data_dir: cannot create {config.data_dir}: {e.strerror}") from None
