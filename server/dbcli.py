"""``ridgeline db``: manage the server database schema.

``ridgeline db upgrade`` migrates to the newest revision; ``ridgeline db current``
prints the database's revision and the newest one (exit 0 when they match, 1 when
an upgrade is due).
"""

from __future__ import annotations

import argparse
import sys

from server import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = sub.add_parser("upgrade", help="upgrade the schema to the newest revision")
    config.add_options(up, config.COMMON_OPTIONS)
    cur = sub.add_parser("current", help="show the schema revision and whether an upgrade is due")
    config.add_options(cur, config.COMMON_OPTIONS)


def run(args: argparse.Namespace) -> int:
    command = f"db {args.db_command}"
    flags = {k: v for k, v in vars(args).items() if k != "db_command"}
    try:
        cfg = config.load(flags)
    except config.ConfigError as e:
        return config.report_error(command, e)

    import sqlalchemy as sa

    from server.db import migrate
    from server.service import MissingDatabase, database_error, open_database_engine

    try:
        engine = open_database_engine(cfg, create=args.db_command == "upgrade")
    except config.ConfigError as e:
        return config.report_error(command, e)
    except MissingDatabase as e:
        print(f"current: ({e})")
        print(f"newest:  {migrate.head_revision()}")
        return 1
    try:
        if args.db_command == "upgrade":
            before = migrate.current_revision(engine)
            after = migrate.upgrade(engine)
            if before == after.current:
                print(f"database {cfg.database_url_display} is already at revision {after.current}")
            else:
                print(f"database {cfg.database_url_display} upgraded from {before or '(empty)'} "
                      f"to {after.current}")
            return 0
        st = migrate.status(engine)
        print(f"current: {st.current or '(empty)'}")
        print(f"newest:  {st.head}")
        return 0 if st.is_current else 1
    except sa.exc.SQLAlchemyError as e:
        print(f"ridgeline {command}: cannot use the database {cfg.database_url_display}: {database_error(e)}",
              file=sys.stderr)
        return 1
    finally:
        engine.dispose()
