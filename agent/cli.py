"""``ridgeline agent``: run the agent, or write its configuration.

    ridgeline agent [--config FILE] [--url URL] [...]        run in the foreground
    ridgeline agent configure --config FILE --url URL [...]   write the INI file

Every setting of the ``[agent]`` section has a flag (``exchange_interval`` is
``--exchange-interval``); flags override the file. A bad setting is one line on
stderr naming the key, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from agent.config import KEYS, ConfigError, load_config, make_config, read_ini

DEFAULT_CONFIG = "/etc/ridgeline/agent.conf"

_HELP = {
    "url": "the server's message-system URL, e.g. https://ridgeline.example/message-system",
    "ping_url": "the ping URL (default: url's sibling /ping)",
    "account_name": "account name (default: standalone)",
    "registration_key": "registration key (password) of the account",
    "computer_title": "this computer's title (default: the host name)",
    "tags": "comma-separated tags",
    "data_path": "directory of the agent's state (default: /var/lib/ridgeline/agent)",
    "log_dir": "directory for agent.log (default: log to stderr)",
    "log_level": "debug, info, warn, error or critical (default: info)",
    "exchange_interval": "seconds between exchanges (default: 900)",
    "urgent_exchange_interval": "seconds between urgent exchanges (default: 60)",
    "ping_interval": "seconds between pings (default: 30)",
    "script_users": "ALL, or comma-separated users scripts may run as (default: none)",
    "script_output_limit": "script output cap in KiB (default: 512)",
    "script_tempdir": "directory for script files (default: the system's)",
    "ssl_public_key": "CA certificate file to verify the https server with",
    "plugins": "comma-separated handler plugins to enable (default: all installed)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=("run", "configure"),
        default="run",
        help="run (default) the agent in the foreground, or configure: write the config file",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"the INI configuration file (default: {DEFAULT_CONFIG} if it exists)",
    )
    for key in KEYS:
        flag = "--" + key.replace("_", "-")
        extra = ["-k"] if key == "ssl_public_key" else []
        parser.add_argument(*extra, flag, dest=key, default=None, metavar="VALUE", help=_HELP.get(key))


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "configure":
            return _configure(args)
        path = args.config
        if path is None and os.path.exists(DEFAULT_CONFIG):
            path = DEFAULT_CONFIG
        config = load_config(path, _overrides(args))
    except ConfigError as e:
        print(f"ridgeline agent: error: {e}", file=sys.stderr)
        return 2
    from agent.lazytls import needs_tls, without_tls

    # The reactor and the HTTP client are imported here, without TLS when every
    # URL is plain http (see agent.lazytls).
    with contextlib.nullcontext() if needs_tls(config) else without_tls():
        from twisted.internet import reactor  # noqa: F401

        from agent.service import run as run_service

    return run_service(config)


def _configure(args: argparse.Namespace) -> int:
    if not args.config:
        raise ConfigError("configure needs --config FILE (where to write)")
    values: dict[str, str] = {}
    if os.path.exists(args.config):
        values.update(read_ini(args.config))
    values.update(_overrides(args))
    make_config(values)  # validates everything; raises ConfigError naming the key
    lines = ["[agent]"] + [f"{k} = {values[k]}" for k in KEYS if values.get(k) not in (None, "")]
    target = args.config
    tmp = f"{target}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise ConfigError(f"cannot write {target!r}: {e.strerror or e}") from None
    print(f"Wrote {target}")
    return 0
