"""What each admin subcommand does: calls through :class:`ApiClient`, text through
``formatting``. Each command takes a :class:`Session` and the parsed arguments and
returns the exit status; errors are raised as :class:`CliError`."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from ridgeline.admin import formatting as fmt
from ridgeline.admin.client import ApiClient, ApiError, CliError, Unreachable
from ridgeline.admin.parsing import iso

#: Every (method, OpenAPI path) the CLI calls; a test checks them against the
#: server's ``/api/v1/openapi.json`` so the two cannot drift apart unnoticed.
ROUTES_USED = (
    ("GET", "/computers"), ("GET", "/computers/{computer_id}"), ("POST", "/computers/{computer_id}/accept"),
    ("DELETE", "/computers/{computer_id}"), ("PUT", "/computers/{computer_id}/tags"),
    ("GET", "/activities"), ("POST", "/activities"), ("GET", "/activities/{activity_id}"),
    ("POST", "/activities/{activity_id}/cancel"), ("POST", "/activities/{activity_id}/approve"),
    ("POST", "/activities/{activity_id}/pause"), ("POST", "/activities/{activity_id}/resume"),
    ("POST", "/activities/{activity_id}/reapply"), ("GET", "/activity-types"), ("POST", "/attachments"),
    ("GET", "/events"),
)
#: Job outputs, served by ``server.api.outputs``.
OUTPUT_ROUTES = (("GET", "/activities/{activity_id}/output"), ("GET", "/activities/{activity_id}/output/{name}"))

#: How long ``watch`` keeps polling through a server that does not answer (a restart).
WATCH_UNREACHABLE_GRACE = 30.0


class UsageError(CliError):
    """A bad value on the command line, found after parsing (exit status 2)."""

    exit_code = 2


@dataclass
class Session:
    client: ApiClient
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    json: bool = False
    tz: dt.tzinfo | None = None  # None: the local zone
    tty: bool | None = None  # None: ask ``out``
    err_tty: bool | None = None  # None: ask ``err``
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def dump(self, value: Any) -> None:
        print(json.dumps(value, indent=2), file=self.out)

    @property
    def is_tty(self) -> bool:
        if self.tty is not None:
            return self.tty
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    @property
    def err_is_tty(self) -> bool:
        if self.err_tty is not None:
            return self.err_tty
        isatty = getattr(self.err, "isatty", None)
        return bool(isatty and isatty())

    def status(self, text: str) -> Callable[[], None]:
        """Show a passing status line on a terminal's stderr while something slow
        runs; returns what clears it. Nothing at all with --json or off a terminal
        (scripts and logs get only results)."""
        if self.json or not self.err_is_tty:
            return lambda: None
        self.err.write(text)
        self.err.flush()

        def clear() -> None:
            # Back to column 0 and erase: the result printed next takes the line.
            self.err.write("\r\x1b[K")
            self.err.flush()

        return clear


def _results(reply: Any) -> tuple[list, int | None]:
    """A list reply ``{count, results, next}`` (or a bare list) → (items, count)."""
    if isinstance(reply, Mapping):
        items = reply.get("results") or []
        return list(items), reply.get("count")
    return list(reply or []), None


def _print_list(s: Session, reply: Any, render: Callable[[list], str], offset: int = 0) -> int:
    if s.json:
        s.dump(reply)
        return 0
    items, count = _results(reply)
    s.print(render(items))
    if count is not None and count > offset + len(items):
        s.print(f"({len(items)} of {count} shown; use --offset {offset + len(items)} for the next page)")
    return 0


# --- computers ------------------------------------------------------------------------


def computers_list(s: Session, args) -> int:
    reply = s.client.get("/computers", status=args.status, tag=args.tag, limit=args.limit, offset=args.offset)
    return _print_list(s, reply, lambda items: fmt.computers_table(items, s.tz), args.offset or 0)


def computers_show(s: Session, args) -> int:
    c = s.client.get(f"/computers/{args.id}")
    s.dump(c) if s.json else s.print(fmt.computer_detail(c, s.tz))
    return 0


def computers_accept(s: Session, args) -> int:
    return _each(s, args.ids, lambda cid: s.client.post(f"/computers/{cid}/accept"),
                 lambda cid, c: f"computer {cid} accepted")


def computers_remove(s: Session, args) -> int:
    def describe(cid, c):
        canceled = (c or {}).get("canceled_activity_ids") or []
        if not canceled:
            return f"computer {cid} removed"
        return f"computer {cid} removed; canceled its activities {', '.join(map(str, canceled))}"

    return _each(s, args.ids, lambda cid: s.client.delete(f"/computers/{cid}"), describe)


def computers_tag(s: Session, args) -> int:
    if not (args.add or args.remove or args.set is not None):
        raise UsageError("say what to change: --add TAG..., --remove TAG... or --set [TAG...]")
    if args.set is not None and (args.add or args.remove):
        raise UsageError("--set replaces every tag; it cannot be combined with --add or --remove")
    current = s.client.get(f"/computers/{args.id}")
    if args.set is not None:
        tags = set(args.set)
    else:
        tags = (set(current.get("tags") or ()) | set(args.add or ())) - set(args.remove or ())
    c = s.client.request("PUT", f"/computers/{args.id}/tags", json_body={"tags": sorted(tags)})
    if s.json:
        s.dump(c)
    else:
        shown = (c or {}).get("tags", sorted(tags)) if isinstance(c, Mapping) else sorted(tags)
        s.print(f"computer {args.id} tags: {', '.join(shown) or '(none)'}")
    return 0


def _each(s: Session, ids, call, describe) -> int:
    """Apply ``call`` to several ids; report each, go on after a failure, and exit
    non-zero if any failed."""
    failed = 0
    replies = []
    for ident in ids:
        try:
            reply = call(ident)
        except ApiError as e:
            if len(ids) == 1:
                raise
            print(f"ridgeline: error: {e}", file=s.err)
            failed += 1
            continue
        replies.append(reply)
        if not s.json:
            s.print(describe(ident, reply))
    if s.json:
        s.dump(replies[0] if len(ids) == 1 else replies)
    return 1 if failed else 0


# --- activities -----------------------------------------------------------------------


def activities_list(s: Session, args) -> int:
    reply = s.client.get(
        "/activities", state=args.state, type=args.type, computer_id=args.computer, parent_id=args.parent,
        created_after=args.since and iso(args.since), created_before=args.until and iso(args.until),
        limit=args.limit, offset=args.offset,
    )
    return _print_list(s, reply, lambda items: fmt.activities_table(items, s.tz), args.offset or 0)


def activities_show(s: Session, args) -> int:
    a = s.client.get(f"/activities/{args.id}")
    children = None
    if args.children and fmt.computer_label(a).startswith("group"):
        children = s.client.get("/activities", parent_id=args.id, limit=args.limit)
    if s.json:
        s.dump(a if children is None else {**a, "children": _results(children)[0]})
        return 0
    s.print(fmt.activity_detail(a, s.tz))
    if children is not None:
        s.print("children:")
        items, count = _results(children)
        s.print(fmt._indent(fmt.activities_table(items, s.tz)))
        if count is not None and count > len(items):
            s.print(f"  ({len(items)} of {count} shown; see: ridgeline activities list --parent {args.id})")
    return 0


PAST = {"cancel": "canceled", "approve": "approved", "pause": "paused", "resume": "resumed"}


def activities_verb(s: Session, args) -> int:
    verb = args.action

    def describe(aid, a):
        if fmt.computer_label(a).startswith("group"):
            return f"activity {aid} {PAST[verb]}: {fmt.group_progress_line(a)}"
        now = fmt.state_label(a)
        return f"activity {aid} {PAST[verb]}" + ("" if now == PAST[verb] else f"; now {now}")

    body = {"reason": args.reason} if args.reason else None
    return _each(s, args.ids, lambda aid: s.client.post(f"/activities/{aid}/{verb}", body), describe)


def activities_reapply(s: Session, args) -> int:
    a = s.client.post(f"/activities/{args.id}/reapply")
    if s.json:
        s.dump(a)
    else:
        s.print(f"activity {a.get('id')} created from activity {args.id}; {fmt.state_label(a)}")
    return 0


def _output_listing(data: bytes) -> list[Mapping[str, Any]] | None:
    """The outputs named by a ``GET /activities/{id}/output`` listing, or None when
    the reply is the output itself."""
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    items = reply.get("outputs") if isinstance(reply, Mapping) else None
    if isinstance(items, list) and all(isinstance(i, Mapping) and "name" in i and "size" in i for i in items):
        return items
    return None


def activities_output(s: Session, args) -> int:
    from urllib.parse import quote

    base = f"/activities/{args.id}/output"
    if args.name:
        data = s.client.request("GET", f"{base}/{quote(args.name, safe='')}", raw=True)
    else:
        data = s.client.request("GET", base, raw=True)
        listing = _output_listing(data)
        if listing is not None:
            # The job stored named outputs: one is the answer, several need a choice.
            if not listing:
                raise CliError(f"activity {args.id} has no output")
            if len(listing) > 1:
                names = ", ".join(str(i["name"]) for i in listing)
                raise UsageError(f"activity {args.id} has several outputs ({names}); name one: "
                                 f"ridgeline activities output {args.id} NAME")
            name = str(listing[0]["name"])
            data = s.client.request("GET", f"{base}/{quote(name, safe='')}", raw=True)
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e.strerror or e}") from None
        return 0
    buffer = getattr(s.out, "buffer", None)
    if buffer is not None:
        s.out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        s.out.write(data.decode("utf-8", "replace"))
    return 0


def activities_types(s: Session, args) -> int:
    reply = s.client.get("/activity-types")
    if s.json:
        s.dump(reply)
        return 0
    rows = []
    for t in _results(reply)[0]:
        schema = t.get("parameters_schema") or {}
        required = set(schema.get("required") or ())
        params = " ".join(p if p in required else f"[{p}]" for p in (schema.get("properties") or {}))
        rows.append((t.get("name"), t.get("kind"), params or "-", fmt.short(t.get("description"))))
    s.print(fmt.table(("TYPE", "KIND", "PARAMETERS", "DESCRIPTION"), rows))
    return 0


def activities_watch(s: Session, args) -> int:
    return watch(s, args.id, interval=args.interval, timeout=args.max_wait)


def watch(s: Session, activity_id: int, *, interval: float = 1.0, timeout: float | None = None) -> int:
    """Poll an activity until it is final, showing what happens: its transitions
    (one activity) or a progress line (a group; rewritten in place on a terminal).
    0 if it ended ``succeeded``, 1 otherwise."""
    start = s.monotonic()
    last_ok = start
    seen: set = set()
    last_line = None
    last_state = None
    in_place = False
    warned = False
    while True:
        try:
            a = s.client.get(f"/activities/{activity_id}")
            last_ok = s.monotonic()
            warned = False
        except Unreachable as e:
            # A server restart should not end a long watch; a dead server should.
            if s.monotonic() - last_ok > WATCH_UNREACHABLE_GRACE:
                raise
            if not warned:
                print(f"ridgeline: {e}; retrying", file=s.err)
                warned = True
            s.sleep(interval)
            continue
        group = fmt.computer_label(a).startswith("group")
        if s.json:
            key = (a.get("state"), fmt.is_final(a), json.dumps(a.get("counts"), sort_keys=True))
            if key != last_line:
                print(json.dumps(a), file=s.out, flush=True)
                last_line = key
        elif group:
            line = fmt.group_progress_line(a)
            if s.is_tty:
                s.out.write("\r\x1b[K" + line)
                s.out.flush()
                in_place = True
            elif line != last_line:
                s.print(line)
                s.out.flush()
            last_line = line
        elif "history" in a:
            for h in a["history"]:
                hid = h.get("id", (h.get("at"), h.get("event"), h.get("to_state")))
                if hid not in seen:
                    seen.add(hid)
                    s.print(fmt.transition_line(activity_id, h, s.tz))
            s.out.flush()
        elif a.get("state") != last_state:
            s.print(f"activity {activity_id} {fmt.state_label(a)}")
            s.out.flush()
        last_state = a.get("state")
        if fmt.is_final(a):
            break
        if timeout is not None and s.monotonic() - start >= timeout:
            if in_place:
                s.print()
            raise CliError(f"activity {activity_id} is still {fmt.state_label(a)} after {timeout:g} s")
        s.sleep(interval)
    if not s.json:
        if in_place:
            s.print()
        s.print(fmt.final_line(a))
    return 0 if a.get("state") == "succeeded" else 1


def _scheduling(args) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.summary:
        body["summary"] = args.summary
    if args.deliver_after is not None:
        body["deliver_after"] = iso(args.deliver_after)
    if args.deliver_before is not None:
        body["deliver_before"] = iso(args.deliver_before)
    if getattr(args, "delay_window", None) is not None:
        body["deliver_delay_window"] = args.delay_window
    if args.requires_approval:
        body["requires_approval"] = True
    if args.wait_for is not None:
        body["wait_for"] = args.wait_for
    return body


def read_script(args) -> str:
    if args.code is not None:
        return args.code
    try:
        if args.file == "-":
            return sys.stdin.read()
        return Path(args.file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--file {args.file}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"--file {args.file}: {e.strerror or e}") from None


def upload_attachments(s: Session, paths) -> dict[str, int]:
    """Upload each file (``POST /attachments?name=F``) and return ``{name: id}``."""
    names: dict[str, Path] = {}
    for p in map(Path, paths or ()):
        if p.name in names:
            raise UsageError(f"--attach: two files are named {p.name!r} ({names[p.name]} and {p})")
        names[p.name] = p
    contents = {}
    for name, p in names.items():  # read all first: a bad path must not leave half the uploads done
        try:
            contents[name] = p.read_bytes()
        except OSError as e:
            raise UsageError(f"--attach {p}: {e.strerror or e}") from None
    out = {}
    for name, data in contents.items():
        reply = s.client.request("POST", "/attachments", query={"name": name}, data=data,
                                 content_type="application/octet-stream")
        out[name] = reply["id"] if isinstance(reply, Mapping) else reply
    return out


def _created(s: Session, a: Mapping[str, Any], args) -> int:
    if s.json and not args.watch:
        s.dump(a)
        return 0
    if not s.json:
        where = "server activity" if a.get("kind") == "server" else fmt.computer_label(a)
        s.print(f"activity {a.get('id')} created ({a.get('type')}, {where}): {fmt.state_label(a)}")
        if not args.watch:
            s.print(f"follow it with: ridgeline activities watch {a.get('id')}")
    if args.watch:
        return watch(s, a["id"], interval=args.interval)
    return 0


def activities_run_script(s: Session, args) -> int:
    params: dict[str, Any] = {"code": read_script(args), "username": args.user}
    if args.interpreter:
        params["interpreter"] = args.interpreter
    if args.time_limit is not None:
        params["time_limit"] = args.time_limit
    body: dict[str, Any] = {"type": "execute-script", "parameters": params}
    if args.computer:
        body["computer_ids"] = args.computer
    if args.tag:
        body["computer_tags"] = args.tag
    body.update(_scheduling(args))
    if args.attach:
        params["attachments"] = upload_attachments(s, args.attach)
    # One POST creates every child: seconds for thousands of computers.
    clear = s.status(f"creating activities {_targets(args.computer, args.tag)}…")
    try:
        created = s.client.post("/activities", body)
    finally:
        clear()
    return _created(s, created, args)


def _targets(computer_ids, tags) -> str:
    """``for 3 computers``, ``for tag web``, ``for 1 computer and tags a, b``."""
    parts = []
    if computer_ids:
        n = len(set(computer_ids))
        parts.append(f"{n} computer{'' if n == 1 else 's'}")
    if tags:
        parts.append(f"tag{'' if len(tags) == 1 else 's'} {', '.join(tags)}")
    return "for " + " and ".join(parts) if parts else ""


def activities_run_job(s: Session, args) -> int:
    body: dict[str, Any] = {"type": args.type, "parameters": args.params}
    body.update(_scheduling(args))
    return _created(s, s.client.post("/activities", body), args)


# --- events ---------------------------------------------------------------------------


def events(s: Session, args) -> int:
    reply = s.client.get("/events", activity_id=args.activity, computer_id=args.computer,
                         after=args.since and iso(args.since), limit=args.limit, offset=args.offset)
    # The API lists newest first; people read a log oldest first.
    return _print_list(s, reply, lambda items: fmt.events_table(list(reversed(items)), s.tz), args.offset or 0)


def resolve_api_key(args, environ: Mapping[str, str] = os.environ) -> str | None:
    """--api-key, else --api-key-file, else RIDGELINE_API_KEY, else RIDGELINE_API_KEY_FILE."""
    if args.api_key:
        return args.api_key.strip()
    path = args.api_key_file or (None if environ.get("RIDGELINE_API_KEY") else environ.get("RIDGELINE_API_KEY_FILE"))
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the API key file {path}: {getattr(e, 'strerror', None) or e}") from None
        if not key:
            raise UsageError(f"the API key file {path} is empty")
        return key
    return (environ.get("RIDGELINE_API_KEY") or "").strip() or None
