"""The ``ridgeline`` command: a thin dispatcher over subcommands.

Each subcommand names the module that implements it; that module is imported only
when its subcommand runs, so ``ridgeline agent`` never loads the server's code (or
SQLAlchemy's PostgreSQL driver), and ``ridgeline --help`` stays fast.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ridgeline import __version__


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str


# Order is the order shown in --help.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "ridgeline.demo", "run a server and an agent locally and show activities end to end"),
    Subcommand("server", "server.cli", "run the Ridgeline server (REST API and message system)"),
    Subcommand("job-handler", "server.jobhandler.cli", "run a job-handler that executes server activities"),
    Subcommand("db", "server.dbcli", "manage the server database schema (db upgrade)"),
    Subcommand("api-key", "server.apikeycli", "create, list and revoke REST API keys"),
    Subcommand("agent", "agent.cli", "run the agent daemon, or write its configuration"),
    Subcommand("computers", "ridgeline.admin", "list, show, accept, remove and tag computers"),
    Subcommand("activities", "ridgeline.admin", "create, list, watch and act on activities"),
    Subcommand("events", "ridgeline.admin", "list recent activity transitions and events"),
)


def _available(sub: Subcommand) -> bool:
    """Whether the module behind a subcommand exists, found without importing it.

    ``importlib.util.find_spec("server.cli")`` would import ``server``; walking the
    package directories keeps ``--help`` free of any side's code.
    """
    top, *rest = sub.module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return False
    locations = [Path(p) for p in (spec.submodule_search_locations or [])]
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        found = [
            loc / part
            for loc in locations
            if (loc / part / "__init__.py").is_file() or (last and (loc / f"{part}.py").is_file())
        ]
        if not found and not (last and any((loc / f"{part}.py").is_file() for loc in locations)):
            return False
        locations = found
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ridgeline",
        description="Ridgeline: manage fleets of Linux machines.",
    )
    parser.add_argument("--version", action="version", version=f"ridgeline {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for sub in SUBCOMMANDS:
        if _available(sub):
            # add_help=False: the real parser is built lazily by the module.
            subparsers.add_parser(sub.name, help=sub.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0].startswith("-"):
        parser.parse_args(argv)  # --help and --version exit here
        return 2
    name, rest = argv[0], argv[1:]
    sub = next((s for s in SUBCOMMANDS if s.name == name and _available(s)), None)
    if sub is None:
        parser.parse_args(argv)  # prints "invalid choice" and exits 2
        return 2
    module = importlib.import_module(sub.module)
    subparser = argparse.ArgumentParser(prog=f"ridgeline {name}", description=sub.help)
    if getattr(module, "SERVES_SEVERAL_SUBCOMMANDS", False):
        # One module (the admin CLI) serves several subcommands.
        module.add_arguments(subparser, name)
    else:
        module.add_arguments(subparser)
    args = subparser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
