"""``ridgeline api-key``: create, list and revoke REST API keys.

``create --name NAME`` prints the new key once, on stdout, alone on its line (so
``KEY=$(ridgeline api-key create --name ci)`` works); only its sha256 is stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from server import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="api_key_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="a unique name saying who or what uses the key")
    config.add_options(create, config.COMMON_OPTIONS)
    lst = sub.add_parser("list", help="list keys: name, created, last used, revoked")
    config.add_options(lst, config.COMMON_OPTIONS)
    revoke = sub.add_parser("revoke", help="revoke a key; requests with it get 401 from then on")
    revoke.add_argument("name", metavar="NAME")
    config.add_options(revoke, config.COMMON_OPTIONS)


def _when(t: dt.datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace, now=None) -> int:
    action = args.api_key_command
    command = f"api-key {action}"
    flags = {k: v for k, v in vars(args).items() if k in config.OPTIONS_BY_NAME or k == "config"}
    try:
        cfg = config.load(flags)
    except config.ConfigError as e:
        return config.report_error(command, e)

    import sqlalchemy as sa

    from server.db import attach_components, inline_runner
    from server.db import migrate
    from server.db.apikeys import ApiKeyError
    from server.db.base import Database
    from server.service import MissingDatabase, database_error, open_database_engine

    def fail(message: str) -> int:
        print(f"ridgeline {command}: {message}", file=sys.stderr)
        return 1

    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        engine = open_database_engine(cfg, create=action != "list")
    except config.ConfigError as e:
        return config.report_error(command, e)
    except MissingDatabase as e:
        return fail(str(e))
    try:
        migrate.require_current(engine)
        db = attach_components(Database(engine, inline_runner))
        # inline_runner: the Deferreds have fired by now; their results are read here.
        if action == "create":
            key, secret = _result(db.apikeys.create(args.name, now))
            print(secret)
            print(f"created API key {key.name!r}; it is shown only this once", file=sys.stderr)
        elif action == "list":
            keys = _result(db.apikeys.list())
            rows = [("NAME", "CREATED", "LAST USED", "REVOKED")]
            rows += [(k.name, _when(k.created_at), _when(k.last_used_at), _when(k.revoked_at)) for k in keys]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        else:
            key = _result(db.apikeys.revoke(args.name, now))
            print(f"revoked API key {key.name!r}")
        return 0
    except ApiKeyError as e:
        return fail(str(e))
    except migrate.SchemaNotCurrent as e:
        return fail(str(e))
    except sa.exc.SQLAlchemyError as e:
        return fail(f"cannot use the database {cfg.database_url_display}: {database_error(e)}")
    finally:
        engine.dispose()


def _result(d):
    """The result of an already-fired Deferred (inline runner); raises its failure."""
    box: list = []
    d.addBoth(box.append)
    (value,) = box
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value
