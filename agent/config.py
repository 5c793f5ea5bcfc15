"""The agent's configuration: an INI file with one ``[agent]`` section.

Key names follow landscape-client's where the meaning is the same. Command-line
flags override the file. Every problem (unknown key, bad value, missing ``url``)
is a :class:`ConfigError` whose message names the key, so the CLI can print one
clear line and exit non-zero.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SECTION = "agent"

DEFAULT_DATA_PATH = "/var/lib/ridgeline/agent"
MIN_INTERVAL = 1
#: Longest interval accepted (a week): beyond it the agent would look dead.
MAX_INTERVAL = 7 * 86400
#: Largest script output kept, in KiB: a result must fit in one exchange a
#: server accepts (decoded with replacement, a byte can become 3).
MAX_SCRIPT_OUTPUT_LIMIT = 4096
#: Longest tag (the server's column).
MAX_TAG_LENGTH = 200

_TAG = re.compile(r"^\w+[\w-]*$")
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$")
_LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(ValueError):
    """A bad configuration; ``key`` names the offending setting (or is None)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings, validated. Build with :func:`load_config` or
    :func:`make_config`.

    ``script_users`` is ``"ALL"``, a tuple of user names, or ``()`` (nobody: the
    default, so no script runs until an administrator says who may run them).
    ``plugins`` is ``None`` (every installed plugin) or a tuple of plugin names.
    """

    url: str
    ping_url: str
    account_name: str = "standalone"
    registration_key: str | None = None
    computer_title: str = ""
    tags: str | None = None
    data_path: str = DEFAULT_DATA_PATH
    log_dir: str | None = None
    log_level: str = "info"
    exchange_interval: int = 900
    urgent_exchange_interval: int = 60
    ping_interval: int = 30
    script_users: str | tuple[str, ...] = ()
    script_output_limit: int = 512
    script_tempdir: str | None = None
    ssl_public_key: str | None = None
    plugins: tuple[str, ...] | None = None


KEYS = tuple(f.name for f in fields(AgentConfig))


def derive_ping_url(url: str) -> str:
    """``url``'s sibling path ``/ping``: ``https://h/message-system`` → ``https://h/ping``."""
    parts = urlsplit(url)
    base = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/ping", "", ""))


def _check_url(key: str, value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # raises on a port that is not a number in 0-65535
    except ValueError as e:
        raise ConfigError(f"{key}: {value!r} is not a valid URL ({e})", key) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http:// or https:// URL", key)
    if parts.username is not None or parts.password is not None:
        # It would be logged with every failure, and nothing sends it anyway.
        raise ConfigError(f"{key}: user names and passwords in the URL are not supported", key)
    if parts.fragment:
        raise ConfigError(f"{key}: {value!r} has a #fragment", key)
    return value


def _whole_number(key: str, value: str | int, unit: str) -> int:
    text = str(value).strip()
    # int() would also take "5_0", " +5" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]+", text, flags=re.ASCII) or len(text) > 30:
        raise ConfigError(f"{key}: {value!r} is not a whole number of {unit}", key)
    return int(text)


def _interval(key: str, value: str | int) -> int:
    n = _whole_number(key, value, "seconds")
    if n < MIN_INTERVAL:
        raise ConfigError(f"{key}: must be at least {MIN_INTERVAL} second, got {n}", key)
    if n > MAX_INTERVAL:
        raise ConfigError(f"{key}: must be at most {MAX_INTERVAL} seconds (a week), got {n}", key)
    return n


def _script_users(value: str) -> str | tuple[str, ...]:
    text = value.strip()
    if text.upper() == "ALL":
        return "ALL"
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if any(n.upper() == "ALL" for n in names):
        raise ConfigError("script_users: ALL stands alone (it allows every user)", "script_users")
    for n in names:
        if not _USER.match(n):
            raise ConfigError(f"script_users: {n!r} is not a valid user name", "script_users")
    return names


def _names(key: str, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for n in names:
        if not re.match(r"^[\w.-]+$", n):
            raise ConfigError(f"{key}: {n!r} is not a valid plugin name", key)
    return names


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _parse(key: str, value: str):
    """Validate one raw (string) value; returns the typed value."""
    if _CONTROL.search(value):
        # A newline would also let `configure` write an extra line (key) into the file.
        raise ConfigError(f"{key}: control characters (newline, tab, ...) are not allowed", key)
    if key in ("url", "ping_url"):
        return _check_url(key, value.strip())
    if key in ("exchange_interval", "urgent_exchange_interval", "ping_interval"):
        return _interval(key, value)
    if key == "script_output_limit":
        n = _whole_number(key, value, "KiB")
        if n < 1:
            raise ConfigError(f"script_output_limit: must be at least 1 KiB, got {n}", key)
        if n > MAX_SCRIPT_OUTPUT_LIMIT:
            raise ConfigError(f"script_output_limit: must be at most {MAX_SCRIPT_OUTPUT_LIMIT} KiB, got {n}", key)
        return n
    if key == "log_level":
        level = value.strip().lower()
        if level == "warning":
            level = "warn"
        if level not in _LOG_LEVELS:
            raise ConfigError(f"log_level: {value!r} is not one of {', '.join(_LOG_LEVELS)}", key)
        return level
    if key == "script_users":
        return _script_users(value)
    if key == "plugins":
        return _names(key, value)
    if key == "tags":
        tags = [t.strip() for t in value.split(",") if t.strip()]
        for t in tags:
            if len(t) > MAX_TAG_LENGTH:
                raise ConfigError(f"tags: {t[:20]!r}... is longer than {MAX_TAG_LENGTH} characters", key)
            if not _TAG.match(t):
                raise ConfigError(f"tags: {t!r} is not a valid tag (letters, digits, _ and -)", key)
        return ", ".join(tags) or None
    if key in ("account_name", "computer_title"):
        if not value.strip():
            raise ConfigError(f"{key}: must not be empty", key)
        return value.strip()
    if key == "ssl_public_key":
        path = value.strip()
        if not Path(path).is_file():
            raise ConfigError(f"ssl_public_key: CA file {path!r} does not exist", key)
        try:
            text = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"ssl_public_key: cannot read {path!r}: {e.strerror or e}", key) from None
        if b"-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(f"ssl_public_key: {path!r} holds no PEM certificate", key)
        return path
    if key in ("data_path", "log_dir", "script_tempdir"):
        if not value.strip():
            raise ConfigError(f"{key}: must not be empty", key)
        return value.strip()
    return value.strip() or None  # registration_key


def make_config(values: dict[str, object]) -> AgentConfig:
    """Build a validated :class:`AgentConfig` from raw values (strings or typed).

    ``None`` values are ignored (not set). Raises :class:`ConfigError`.
    """
    parsed: dict[str, object] = {}
    for key, value in values.items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r} (known: {', '.join(KEYS)})", key)
        if value is None:
            continue
        if key == "script_users" and isinstance(value, tuple):
            value = ", ".join(value) if value else ""
        if key == "plugins" and isinstance(value, tuple):
            value = ", ".join(value)
        parsed[key] = _parse(key, str(value))
    if "url" not in parsed:
        raise ConfigError("url: the server's message-system URL is required", "url")
    parsed.setdefault("ping_url", derive_ping_url(parsed["url"]))
    parsed.setdefault("computer_title", socket.gethostname())
    return AgentConfig(**parsed)


def read_ini(path: str | os.PathLike) -> dict[str, str]:
    """The raw ``[agent]`` values of an INI file. Raises :class:`ConfigError`."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {e}") from None
    except configparser.Error as e:
        raise ConfigError(f"configuration file {str(path)!r} is not valid INI: {e.message}") from None
    extra = [s for s in parser.sections() if s != SECTION]
    if extra:
        raise ConfigError(f"configuration file {str(path)!r}: unknown section [{extra[0]}] (only [agent])")
    if not parser.has_section(SECTION):
        raise ConfigError(f"configuration file {str(path)!r} has no [{SECTION}] section")
    return dict(parser.items(SECTION))


def load_config(path: str | os.PathLike | None, overrides: dict[str, object] | None = None) -> AgentConfig:
    """Read ``path`` (may be None), apply ``overrides`` (flags; None = unset), validate."""
    values: dict[str, object] = dict(read_ini(path)) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return make_config(values)


def with_intervals(config: AgentConfig, **intervals: int) -> AgentConfig:
    """A copy of ``config`` with new intervals (from ``set-intervals``), validated."""
    checked = {k: _interval(k, v) for k, v in intervals.items()}
    return replace(config, **checked)
