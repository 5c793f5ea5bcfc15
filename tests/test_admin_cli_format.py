"""The admin CLI's pure parts: WHEN, --param, --wait-for, tables and detail views,
argument parsing, and the watch loop's display (against a scripted API)."""

import argparse
import datetime as dt
import io
import json

import pytest

from ridgeline import admin
from ridgeline.admin import commands, formatting as fmt, parsing
from ridgeline.admin.client import ApiClient, Unreachable, _error_from_body

from admin_cli_support import run_cli

UTC = dt.timezone.utc
NOW = dt.datetime(2030, 1, 31, 8, 0, 0, tzinfo=UTC)


# --- WHEN ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, delta", [
    ("+30s", dt.timedelta(seconds=30)), ("+5m", dt.timedelta(minutes=5)), ("+2h", dt.timedelta(hours=2)),
    ("+1d", dt.timedelta(days=1)), ("+1h30m", dt.timedelta(minutes=90)), ("-10m", dt.timedelta(minutes=-10)),
    ("now", dt.timedelta(0)), (" +0s ", dt.timedelta(0)),
])
def test_relative_when(text, delta):
    assert parsing.parse_when(text, NOW) == NOW + delta


def test_iso_when_with_a_zone_is_converted_to_utc():
    assert parsing.parse_when("2030-02-01T10:00:00+02:00", NOW) == dt.datetime(2030, 2, 1, 8, tzinfo=UTC)
    assert parsing.parse_when("2030-02-01T10:00Z", NOW) == dt.datetime(2030, 2, 1, 10, tzinfo=UTC)


def test_iso_when_without_a_zone_is_local_time():
    local = dt.datetime(2030, 2, 1, 10, 0).astimezone()
    assert parsing.parse_when("2030-02-01T10:00", NOW) == local.astimezone(UTC)
    assert parsing.parse_when("2030-02-01T10:00", NOW).tzinfo == UTC


@pytest.mark.parametrize("text", ["+5x", "+", "5m", "tomorrow", "+5m3", "2030-13-01", ""])
def test_bad_when_says_what_is_accepted(text):
    with pytest.raises(parsing.ValueProblem, match=r"\+30s"):
        parsing.parse_when(text, NOW)


def test_iso_sent_to_the_server():
    assert parsing.iso(dt.datetime(2030, 1, 1, 3, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == "2030-01-01T01:00:00Z"


# --- --param, --wait-for, --time-limit -----------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("n=3", ("n", 3)), ("f=2.5", ("f", 2.5)), ("b=true", ("b", True)), ("z=null", ("z", None)),
    ("l=[1, 2]", ("l", [1, 2])), ('o={"a": 1}', ("o", {"a": 1})), ('q="3"', ("q", "3")),
    ("s=hello", ("s", "hello")), ("s=", ("s", "")), ("s=a=b", ("s", "a=b")), (" k =x", ("k", "x")),
    ("s=[oops", ("s", "[oops")),
])
def test_param_values_are_json_when_they_parse(text, expected):
    assert parsing.parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", " =3"])
def test_bad_param(text):
    with pytest.raises(parsing.ValueProblem, match="KEY=VALUE"):
        parsing.parse_param(text)


def test_params_refuse_a_key_given_twice():
    assert parsing.parse_params(["a=1", "b=x"]) == {"a": 1, "b": "x"}
    with pytest.raises(parsing.ValueProblem, match="'a' is given twice"):
        parsing.parse_params(["a=1", "a=2"])


def test_wait_for():
    assert parsing.parse_wait_for("12") == {"activity_id": 12, "threshold": 100}
    assert parsing.parse_wait_for("12:50") == {"activity_id": 12, "threshold": 50}
    for bad, why in [("x", "number"), ("0", "positive"), ("3:101", "between"), ("3:x", "percentage")]:
        with pytest.raises(parsing.ValueProblem, match=why):
            parsing.parse_wait_for(bad)


def test_seconds():
    assert parsing.parse_seconds("30") == 30
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(parsing.ValueProblem):
            parsing.parse_seconds(bad)


# --- tables and views ---------------------------------------------------------------


def activity(**kw):
    base = {"id": 7, "kind": "client", "type": "execute-script", "state": "queued", "computer_id": 3,
            "summary": "", "created_at": "2030-01-31T08:00:00Z", "cancel_provisional": False, "is_group": False,
            "result_code": None, "result_name": None, "result_text": None, "progress": 0}
    base.update(kw)
    return base


def test_table_aligns_columns_and_keeps_the_header_when_empty():
    assert fmt.table(("ID", "NAME"), [(1, "a"), (100, None)]) == "ID   NAME\n1    a\n100  -"
    assert fmt.table(("ID", "STATE", "X"), []) == "ID  STATE  X"


def test_activities_table_layout():
    rows = [
        activity(id=12, state="blocked", blocked_reason="approval", summary="patch\nsecond line"),
        activity(id=9, state="failed", result_code=102, result_name="time-limit", result_text="killed after 5 s\nmore"),
        activity(id=8, is_group=True, computer_id=None, children_count=250, state="in-progress", summary="fleet"),
        activity(id=2, state="canceled", cancel_provisional=True),
    ]
    out = fmt.activities_table(rows, UTC).splitlines()
    assert out[0].split() == ["ID", "TYPE", "STATE", "COMPUTER", "CREATED", "SUMMARY/RESULT"]
    assert out[1] == ("12  execute-script  blocked (approval)      3             2030-01-31 08:00:00  patch …")
    assert out[2].endswith("failed                  3             2030-01-31 08:00:00  [time-limit] killed after 5 s …")
    assert "in-progress             group of 250" in out[3]
    assert "canceled (provisional)" in out[4]
    # Every column starts at the same offset on every line.
    starts = [line.index("execute-script") for line in out[1:]]
    assert len(set(starts)) == 1 and out[0].index("TYPE") == starts[0]


def test_long_text_is_cut():
    cell = fmt.short("x" * 100)
    assert len(cell) == fmt.MAX_CELL and cell.endswith("…")


def test_local_time():
    tz = dt.timezone(dt.timedelta(hours=-5))
    assert fmt.local_time("2030-01-31T08:00:00Z", tz) == "2030-01-31 03:00:00"
    assert fmt.local_time(None) == "-"


def test_is_final_and_provisional_cancel():
    assert fmt.is_final(activity(state="succeeded"))
    assert not fmt.is_final(activity(state="canceled", cancel_provisional=True))
    assert fmt.is_final(activity(state="canceled"))
    assert not fmt.is_final(activity(state="in-progress"))


def test_activity_detail_has_history_counts_and_parameters():
    a = activity(
        id=5, is_group=True, computer_id=None, children_count=3, counts={"succeeded": 2, "failed": 1},
        state="failed", parameters={"code": "#!/bin/sh\necho hi", "username": "root", "env": {"A": "1"}},
        wait_for={"activity_id": 4, "threshold": 50}, completed_at="2030-01-31T08:01:00Z",
        history=[{"id": 1, "at": "2030-01-31T08:00:00Z", "event": "transition", "from_state": None,
                  "to_state": "queued", "actor": "admin", "reason": "created"},
                 {"id": 2, "at": "2030-01-31T08:01:00Z", "event": "late-result", "from_state": "failed",
                  "to_state": None, "actor": "agent", "reason": "result after the end"}],
    )
    text = fmt.activity_detail(a, UTC)
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in text.splitlines()
              if ":" in line and not line.startswith(" ")}
    assert fields["children"] == "3"
    assert fields["by state"] == "succeeded 2, failed 1"
    assert fields["wait for"] == "activity 4 at 50%"
    assert fields["state"] == "failed"
    assert "    echo hi" in text and 'env: {"A": "1"}' in text
    assert "2030-01-31 08:00:00  (new) → queued  admin  created" in text
    assert "late-result" in text
    assert "computer:" not in text  # a group has no single computer


def test_group_progress_line():
    a = activity(id=8, is_group=True, children_count=10, state="in-progress",
                 counts={"queued": 3, "in-progress": 2, "succeeded": 4, "failed": 1})
    assert fmt.group_progress_line(a) == (
        "activity 8 in-progress: 5/10 children final (50%) — queued 3, in-progress 2, succeeded 4, failed 1")


def test_events_and_computers_tables():
    ev = [{"id": 1, "activity_id": 4, "computer_id": None, "at": "2030-01-31T08:00:00Z", "event": "transition",
           "from_state": "queued", "to_state": "in-progress", "actor": "agent", "reason": ""}]
    assert fmt.events_table(ev, UTC).splitlines()[1] == "2030-01-31 08:00:00  4         -         queued → in-progress  agent"
    comps = [{"id": 1, "title": "web1", "hostname": "web1.lan", "status": "pending", "tags": ["a", "b"],
              "last_seen": None}]
    assert fmt.computers_table(comps, UTC).splitlines()[1].split() == ["1", "web1", "web1.lan", "pending", "-", "a,b"]


# --- errors from the HTTP layer ------------------------------------------------------


def test_api_error_line():
    body = json.dumps({"error": {"code": "conflict", "message": "activity 4 is succeeded", "current_state": "succeeded"}})
    e = _error_from_body(409, "Conflict", body.encode(), True)
    assert str(e) == "activity 4 is succeeded (HTTP 409)" and e.details["current_state"] == "succeeded"
    assert str(_error_from_body(401, "", b"{}", True)) == "the API key was refused (HTTP 401)"
    assert "RIDGELINE_API_KEY" in str(_error_from_body(401, "", b"{}", False))
    assert str(_error_from_body(502, "Bad Gateway", b"<html>", True)) == "the server answered 502 Bad Gateway: <html> (HTTP 502)"


def test_unreachable_server(unused_tcp_port):
    client = ApiClient(f"http://127.0.0.1:{unused_tcp_port}", "k", timeout=5)
    with pytest.raises(Unreachable, match=rf"cannot reach the server at http://127.0.0.1:{unused_tcp_port}: "):
        client.get("/activities")


@pytest.fixture
def unused_tcp_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_query_strings():
    c = ApiClient("http://h:1/", None)
    assert c.url("/activities", {"state": "queued", "limit": 5, "x": None, "b": True}) == (
        "http://h:1/api/v1/activities?state=queued&limit=5&b=true")


# --- the command line, without a server -----------------------------------------------


def test_connection_refused_is_one_line(monkeypatch, capsys, unused_tcp_port):
    code, out, err = run_cli(["activities", "list", "--url", f"http://127.0.0.1:{unused_tcp_port}"], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err == f"ridgeline: error: cannot reach the server at http://127.0.0.1:{unused_tcp_port}: Connection refused\n"


def test_url_comes_from_the_environment(monkeypatch, capsys, unused_tcp_port):
    code, _, err = run_cli(["computers", "list"], monkeypatch, capsys,
                           env={"RIDGELINE_URL": f"http://127.0.0.1:{unused_tcp_port}"})
    assert code == 1 and f"127.0.0.1:{unused_tcp_port}" in err


@pytest.mark.parametrize("argv, message", [
    (["activities", "run-script", "--computer", "1", "--code", "x", "--user", "u", "--deliver-after", "soon"],
     "argument --deliver-after: 'soon' is not a time"),
    (["activities", "run-script", "--computer", "1", "--tag", "t", "--code", "x", "--user", "u"],
     "not allowed with argument"),
    (["activities", "run-script", "--computer", "1", "--code", "x"], "--user"),
    (["activities", "run-script", "--computer", "1", "--user", "u"], "one of the arguments --file --code"),
    (["activities", "run-job", "t", "--param", "nope"], "'nope' is not KEY=VALUE"),
    (["activities", "run-job", "t", "--param", "a=1", "--param", "a=2"], "'a' is given twice"),
    (["activities", "cancel", "x"], "'x' is not a number"),
    (["activities", "watch", "1", "--interval", "0"], "must be more than 0"),
    (["computers", "frobnicate"], "invalid choice"),
    (["activities", "list", "--url", "ftp://x"], "give an http:// or https:// URL"),
])
def test_usage_errors(argv, message, monkeypatch, capsys):
    code, out, err = run_cli(argv, monkeypatch, capsys)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_unreadable_files_are_usage_errors(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["activities", "run-script", "--computer", "1", "--file", str(tmp_path / "none.sh"),
                            "--user", "u", "--url", "http://127.0.0.1:9"], monkeypatch, capsys)
    assert code == 2 and err == f"ridgeline: error: --file {tmp_path / 'none.sh'}: No such file or directory\n"
    code, _, err = run_cli(["activities", "list", "--api-key-file", str(tmp_path / "key")], monkeypatch, capsys)
    assert code == 2 and "cannot read the API key file" in err
    (tmp_path / "key").write_text("\n")
    code, _, err = run_cli(["activities", "list"], monkeypatch, capsys, env={"RIDGELINE_API_KEY_FILE": str(tmp_path / "key")})
    assert code == 2 and "is empty" in err


def test_api_key_sources(tmp_path):
    import argparse

    (tmp_path / "k").write_text("from-file\n")
    ns = lambda **kw: argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})  # noqa: E731
    assert commands.resolve_api_key(ns(api_key="cli"), {"RIDGELINE_API_KEY": "env"}) == "cli"
    assert commands.resolve_api_key(ns(api_key_file=str(tmp_path / "k")), {"RIDGELINE_API_KEY": "env"}) == "from-file"
    assert commands.resolve_api_key(ns(), {"RIDGELINE_API_KEY": "env"}) == "env"
    assert commands.resolve_api_key(ns(), {"RIDGELINE_API_KEY_FILE": str(tmp_path / "k")}) == "from-file"
    assert commands.resolve_api_key(ns(), {}) is None


# --- watch, against a scripted API ---------------------------------------------------


class ScriptedApi:
    """Answers GET /activities/{id} with the next of a list of replies."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    def get(self, path, **query):
        self.calls += 1
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def group(state, counts, **kw):
    return activity(id=8, is_group=True, computer_id=None, children_count=sum(counts.values()), state=state,
                    counts=counts, **kw)


def session(api, tty, clock=None):
    out, err = io.StringIO(), io.StringIO()
    t = clock or [0.0]
    return commands.Session(api, out=out, err=err, tty=tty, sleep=lambda s: t.__setitem__(0, t[0] + s),
                            monotonic=lambda: t[0], tz=UTC), out, err


GROUP_STEPS = [
    group("queued", {"queued": 4}),
    group("in-progress", {"in-progress": 2, "queued": 2}),
    group("in-progress", {"in-progress": 2, "queued": 2}),
    group("in-progress", {"succeeded": 3, "in-progress": 1}),
    group("succeeded", {"succeeded": 4}),
]


def test_watch_group_plain_lines_when_not_a_terminal():
    s, out, _ = session(ScriptedApi(GROUP_STEPS), tty=False)
    assert commands.watch(s, 8, interval=1) == 0
    lines = out.getvalue().splitlines()
    assert lines == [
        "activity 8 queued: 0/4 children final (0%) — queued 4",
        "activity 8 in-progress: 0/4 children final (0%) — queued 2, in-progress 2",  # unchanged poll not repeated
        "activity 8 in-progress: 3/4 children final (75%) — in-progress 1, succeeded 3",
        "activity 8 succeeded: 4/4 children final (100%) — succeeded 4",
        "activity 8 ended succeeded: succeeded 4",
    ]


def test_watch_group_in_place_on_a_terminal():
    s, out, _ = session(ScriptedApi(GROUP_STEPS), tty=True)
    assert commands.watch(s, 8, interval=1) == 0
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 5 and text.count("\n") == 2  # one line rewritten, then the end
    assert text.endswith("succeeded 4\nactivity 8 ended succeeded: succeeded 4\n")


def test_watch_group_that_failed_exits_1():
    steps = [group("in-progress", {"in-progress": 1, "failed": 1}), group("failed", {"succeeded": 1, "failed": 1})]
    s, out, _ = session(ScriptedApi(steps), tty=False)
    assert commands.watch(s, 8) == 1
    assert out.getvalue().splitlines()[-1] == "activity 8 ended failed: succeeded 1, failed 1"


def h(i, frm, to, reason=""):
    return {"id": i, "at": f"2030-01-31T08:00:0{i}Z", "event": "transition", "from_state": frm, "to_state": to,
            "actor": "x", "reason": reason}


def test_watch_single_prints_each_transition_once_and_waits_out_a_provisional_cancel():
    h1, h2, h3 = h(1, None, "queued", "created"), h(2, "queued", "in-progress"), h(3, "in-progress", "canceled")
    steps = [
        activity(state="queued", history=[h1]),
        activity(state="in-progress", history=[h1, h2]),
        activity(state="canceled", cancel_provisional=True, history=[h1, h2, h3]),
        activity(state="succeeded", result_name=None, result_text="done anyway", history=[h1, h2, h3, h(4, "canceled", "succeeded")]),
    ]
    api = ScriptedApi(steps)
    s, out, _ = session(api, tty=False)
    assert commands.watch(s, 7) == 0
    assert api.calls == 4
    assert out.getvalue().splitlines() == [
        "2030-01-31 08:00:01  activity 7  (new) → queued  (created)",
        "2030-01-31 08:00:02  activity 7  queued → in-progress",
        "2030-01-31 08:00:03  activity 7  in-progress → canceled",
        "2030-01-31 08:00:04  activity 7  canceled → succeeded",
        "activity 7 ended succeeded: done anyway",
    ]


def test_watch_survives_a_short_outage_but_not_a_long_one():
    steps = [activity(state="queued", history=[]), Unreachable("http://x", "Connection refused"),
             activity(state="failed", result_name="script-failed", result_text="exit 3", history=[])]
    s, out, err = session(ScriptedApi(steps), tty=False)
    assert commands.watch(s, 7, interval=5) == 1
    assert "retrying" in err.getvalue()
    assert out.getvalue().splitlines()[-1] == "activity 7 ended failed: [script-failed] exit 3"

    down = [activity(state="queued", history=[])] + [Unreachable("http://x", "refused")] * 100
    s, _, _ = session(ScriptedApi(down), tty=False)
    with pytest.raises(Unreachable):
        commands.watch(s, 7, interval=5)


def test_watch_gives_up_after_max_wait():
    s, out, _ = session(ScriptedApi([activity(state="queued", history=[])] * 10), tty=False)
    with pytest.raises(commands.CliError, match="activity 7 is still queued after 3 s"):
        commands.watch(s, 7, interval=1, timeout=3)


def test_watch_json_prints_a_line_per_change():
    s, out, _ = session(ScriptedApi(GROUP_STEPS), tty=True)
    s.json = True
    assert commands.watch(s, 8) == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["state"] for x in lines] == ["queued", "in-progress", "in-progress", "succeeded"]


def test_output_listing_is_told_apart_from_an_output():
    listing = json.dumps({"activity_id": 1, "outputs": [{"name": "a.csv", "size": 3, "content_type": "text/csv"}]}).encode()
    assert [i["name"] for i in commands._output_listing(listing)] == ["a.csv"]
    assert commands._output_listing(b"id,state\n1,queued\n") is None
    assert commands._output_listing(b'{"outputs": [{"id": 1}]}') is None
    assert commands._output_listing(b'[1, 2]') is None


# --- creation's status line ------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class CreatingApi:
    """Answers POST /activities with a group, noting what stderr showed meanwhile."""

    def __init__(self, err, fail=False):
        self.err = err
        self.fail = fail
        self.err_during_post = None

    def post(self, path, body=None, **kw):
        self.err_during_post = self.err.getvalue()
        if self.fail:
            raise commands.ApiError(400, "bad-request", "no computers have those tags")
        return group("queued", {"queued": len(body.get("computer_ids") or [1, 2])}, type="execute-script")


def run_script(argv, *, err, json_output=False):
    parser = argparse.ArgumentParser()
    admin.add_arguments(parser, "activities")
    args = parser.parse_args(["run-script", "--code", "true", "--user", "root", *argv])
    api = CreatingApi(err)
    out = io.StringIO()
    s = commands.Session(api, out=out, err=err, json=json_output, tz=UTC)
    return args, s, api, out


@pytest.mark.parametrize("argv, shown", [
    (["--computer", "1", "2", "3", "3"], "creating activities for 3 computers…"),
    (["--computer", "4"], "creating activities for 1 computer…"),
    (["--tag", "web"], "creating activities for tag web…"),
    (["--tag", "web", "db"], "creating activities for tags web, db…"),
])
def test_creation_shows_a_passing_line_on_a_terminal(argv, shown):
    err = FakeTTY()
    args, s, api, out = run_script(argv, err=err)
    assert args.func(s, args) == 0
    assert api.err_during_post == shown
    assert err.getvalue() == shown + "\r\x1b[K", "cleared before the result is printed"
    assert out.getvalue().startswith("activity 8 created (execute-script, group of ")


def test_creation_line_is_cleared_when_the_server_refuses():
    err = FakeTTY()
    args, s, api, out = run_script(["--tag", "nowhere"], err=err)
    api.fail = True
    with pytest.raises(commands.ApiError):
        args.func(s, args)
    assert err.getvalue() == "creating activities for tag nowhere…\r\x1b[K"
    assert out.getvalue() == ""


@pytest.mark.parametrize("tty, json_output", [(False, False), (True, True)])
def test_no_creation_line_off_a_terminal_or_with_json(tty, json_output):
    err = FakeTTY() if tty else io.StringIO()
    args, s, api, out = run_script(["--computer", "1", "2"], err=err, json_output=json_output)
    assert args.func(s, args) == 0
    assert api.err_during_post == "" and err.getvalue() == ""
    if json_output:
        assert json.loads(out.getvalue())["id"] == 8
    else:
        assert out.getvalue().startswith("activity 8 created")
