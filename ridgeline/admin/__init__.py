"""The admin CLI: ``ridgeline computers``, ``ridgeline activities`` and
``ridgeline events``, over the REST API (``/api/v1``).

Layout: ``client`` (HTTP, urllib, timeouts, errors as one line), ``parsing``
(WHEN, ``--param``, ``--wait-for``), ``formatting`` (tables and detail views) and
``commands`` (one function per subcommand). Only the standard library is
imported, so the CLI stays quick to start and never loads the server's code.

Every subcommand takes ``--url`` (default ``$RIDGELINE_URL``, else
``http://127.0.0.1:8080``), ``--api-key`` / ``--api-key-file`` (default
``$RIDGELINE_API_KEY``, then ``$RIDGELINE_API_KEY_FILE``), ``--ca-file`` (default
``$RIDGELINE_CA_FILE``: the CA an https server's certificate must chain to) and
``--json``.
Exit status: 0 success, 1 an error (one line on stderr), 2 a usage error;
``activities watch`` exits 0 only when the activity ended ``succeeded``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from ridgeline.admin import commands, parsing
from ridgeline.admin.client import DEFAULT_TIMEOUT, ApiClient, CliError

#: ``ridgeline.cli`` calls ``add_arguments(parser, name)`` for each subcommand served here.
SERVES_SEVERAL_SUBCOMMANDS = True
DEFAULT_URL = "http://127.0.0.1:8080"
STATES = ("queued", "scheduled", "waiting", "blocked", "in-progress", "failed", "canceled", "succeeded")


def _typed(fn):
    """Adapt a ``parsing`` function to argparse, keeping its message."""

    def convert(text: str):
        try:
            return fn(text)
        except parsing.ValueProblem as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = fn.__name__
    return convert


when_type = _typed(lambda text: parsing.parse_when(text, dt.datetime.now(dt.timezone.utc)))
param_type = _typed(parsing.parse_param)
wait_for_type = _typed(parsing.parse_wait_for)
seconds_type = _typed(parsing.parse_seconds)


def _number(parse, ok, must: str, name: str):
    """An argparse type: ``parse`` the text, then check it with ``ok``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(value):  # also refuses nan, which compares false with everything
            raise argparse.ArgumentTypeError(f"{text!r} {must}")
        return value

    convert.__name__ = name
    return convert


positive_int = _number(int, lambda v: v > 0, "must be positive", "positive_int")
non_negative_int = _number(int, lambda v: v >= 0, "must not be negative", "non_negative_int")
positive_float = _number(float, lambda v: v > 0, "must be more than 0", "positive_float")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("server")
    g.add_argument("--url", help=f"the server's URL (default: $RIDGELINE_URL, else {DEFAULT_URL})")
    g.add_argument("--api-key", metavar="KEY", help="the API key (default: $RIDGELINE_API_KEY; "
                   "prefer --api-key-file, a command line is visible to other users)")
    g.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE "
                   "(default: $RIDGELINE_API_KEY_FILE)")
    g.add_argument("--ca-file", metavar="FILE", help="trust an https server whose certificate this PEM CA "
                   "file signed (default: $RIDGELINE_CA_FILE, else the system's CAs)")
    g.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    return common


def _paging(p: argparse.ArgumentParser, default_limit: int = 100) -> None:
    p.add_argument("--limit", type=positive_int, default=default_limit, help=f"at most N rows (default {default_limit})",
                   metavar="N")
    p.add_argument("--offset", type=non_negative_int, default=0, metavar="N", help="skip the first N rows")


def _schedule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summary", metavar="TEXT", help="a short description shown in lists")
    p.add_argument("--deliver-after", type=when_type, metavar="WHEN",
                   help="not before this time: ISO 8601 (local time unless it has a zone) or +30s, +5m, +2h, +1d")
    p.add_argument("--deliver-before", type=when_type, metavar="WHEN",
                   help="cancel it (expired) if not delivered by this time")
    p.add_argument("--requires-approval", action="store_true", help="start blocked until approved")
    p.add_argument("--wait-for", type=wait_for_type, metavar="ID[:THRESHOLD]",
                   help="run only once activity ID has succeeded (or THRESHOLD%% of its group has)")
    p.add_argument("--watch", action="store_true", help="then watch it until it is final (as activities watch)")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="S", help="with --watch: poll every S seconds")


def _computers(parser: argparse.ArgumentParser, common) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", parents=[common], help="list computers")
    p.add_argument("--status", choices=("accepted", "pending"), help="only computers in this state")
    p.add_argument("--tag", help="only computers with this tag")
    _paging(p)
    p.set_defaults(func=commands.computers_list)
    p = sub.add_parser("show", parents=[common], help="show one computer")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(func=commands.computers_show)
    p = sub.add_parser("accept", parents=[common], help="accept pending computers")
    p.add_argument("ids", type=positive_int, nargs="+", metavar="ID")
    p.set_defaults(func=commands.computers_accept)
    p = sub.add_parser("remove", parents=[common],
                       help="remove computers (revokes their secure ids; their unfinished activities are canceled)")
    p.add_argument("ids", type=positive_int, nargs="+", metavar="ID")
    p.set_defaults(func=commands.computers_remove)
    p = sub.add_parser("tag", parents=[common], help="add, remove or set a computer's tags")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("--add", nargs="+", metavar="TAG", action="extend", help="tags to add")
    p.add_argument("--remove", nargs="+", metavar="TAG", action="extend", help="tags to remove")
    p.add_argument("--set", nargs="*", metavar="TAG", help="replace every tag (none: clear them)")
    p.set_defaults(func=commands.computers_tag)


def _activities(parser: argparse.ArgumentParser, common) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", parents=[common], help="list activities, newest first")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--type", metavar="TYPE")
    p.add_argument("--computer", type=positive_int, metavar="ID")
    p.add_argument("--parent", type=positive_int, metavar="ID", help="the children of group ID")
    p.add_argument("--since", type=when_type, metavar="WHEN", help="created at or after WHEN: ISO 8601, or relative as --since=-1h (an hour ago)")
    p.add_argument("--until", type=when_type, metavar="WHEN", help="created before WHEN")
    _paging(p)
    p.set_defaults(func=commands.activities_list)

    p = sub.add_parser("show", parents=[common], help="show one activity with its history")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("--children", action="store_true", help="for a group, list its children too")
    p.add_argument("--limit", type=positive_int, default=100, metavar="N", help="with --children: at most N")
    p.set_defaults(func=commands.activities_show)

    for verb, text in (("cancel", "cancel activities (on a group: each child not final)"),
                       ("approve", "approve activities that wait for approval"),
                       ("pause", "pause queued activities"),
                       ("resume", "resume paused activities")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("ids", type=positive_int, nargs="+", metavar="ID")
        p.add_argument("--reason", metavar="TEXT", help="recorded in the history")
        p.set_defaults(func=commands.activities_verb)

    p = sub.add_parser("reapply", parents=[common], help="create the activity again, for the same computers")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(func=commands.activities_reapply)

    p = sub.add_parser("watch", parents=[common], help="follow an activity (or group) until it is final; "
                       "exit 0 if it succeeded")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="S", help="poll every S seconds (default 1)")
    p.add_argument("--max-wait", type=positive_float, metavar="S",
                   help="give up (exit 1) if it is not final after S seconds")
    p.set_defaults(func=commands.activities_watch)

    p = sub.add_parser("output", parents=[common], help="write a server activity's job output")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("name", nargs="?", metavar="NAME", help="which output, when the job stored several")
    p.set_defaults(func=commands.activities_output)

    p = sub.add_parser("types", parents=[common], help="list the activity types and their parameters")
    p.set_defaults(func=commands.activities_types)

    p = sub.add_parser("run-script", parents=[common], help="run a script on computers (execute-script)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--computer", type=positive_int, nargs="+", action="extend", metavar="ID")
    target.add_argument("--tag", nargs="+", action="extend", metavar="TAG", help="computers having any of the tags")
    code = p.add_mutually_exclusive_group(required=True)
    code.add_argument("--file", metavar="PATH", help="the script (- for stdin)")
    code.add_argument("--code", metavar="TEXT", help="the script text")
    p.add_argument("--user", required=True, metavar="USER", help="run it as this user")
    p.add_argument("--interpreter", metavar="PATH", help="default: the script's #! line")
    p.add_argument("--time-limit", type=seconds_type, metavar="S", help="kill it after S seconds")
    p.add_argument("--attach", nargs="+", action="extend", metavar="FILE",
                   help="upload files; the script finds them in $LANDSCAPE_ATTACHMENTS")
    p.add_argument("--delay-window", type=non_negative_int, metavar="S",
                   help="spread a group's deliveries over S seconds")
    _schedule_options(p)
    p.set_defaults(func=commands.activities_run_script)

    p = sub.add_parser("run-job", parents=[common], help="run a server activity (a job)")
    p.add_argument("type", metavar="TYPE")
    p.add_argument("--param", type=param_type, action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter; VALUE is JSON when it parses as JSON, else a string")
    _schedule_options(p)
    p.set_defaults(func=commands.activities_run_job)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    common = _common()
    if name == "computers":
        _computers(parser, common)
    elif name == "activities":
        _activities(parser, common)
    elif name == "events":
        for action in common._actions:
            if action.option_strings and "-h" not in action.option_strings:
                parser._add_action(action)
        parser.add_argument("--activity", type=positive_int, metavar="ID")
        parser.add_argument("--computer", type=positive_int, metavar="ID")
        parser.add_argument("--since", type=when_type, metavar="WHEN", help="at or after WHEN: ISO 8601, or relative as --since=-10m (ten minutes ago)")
        _paging(parser)
        parser.set_defaults(func=commands.events)
    else:
        raise ValueError(f"ridgeline.admin does not serve {name!r}")


def run(args: argparse.Namespace, *, out=None, err=None, environ=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        if getattr(args, "action", None) == "run-job":
            try:
                args.params = parsing.collect_params(args.param)
            except parsing.ValueProblem as e:
                raise commands.UsageError(f"--param: {e}") from None
        url = args.url or environ.get("RIDGELINE_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise commands.UsageError(f"--url {url}: give an http:// or https:// URL")
        key = commands.resolve_api_key(args, environ)
        ca_file = args.ca_file or environ.get("RIDGELINE_CA_FILE") or None
        client = ApiClient(url, key, timeout=args.timeout, ca_file=ca_file)
        session = commands.Session(client, out=out, err=err, json=args.json)
        return int(args.func(session, args) or 0)
    except CliError as e:
        print(f"ridgeline: error: {e}", file=err)
        return e.exit_code
    except KeyboardInterrupt:
        print("ridgeline: interrupted", file=err)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
