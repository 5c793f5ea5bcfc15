"""``activity-report``: CSV and JSON outputs of the activities matching filters,
run by a real job-handler on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from server.db.activities import NewActivity
from server.db.computers import NewComputer
from server.hookspecs import ParameterError

from jobs_plugin_support import make_world


@pytest.fixture
def world(server_db):
    from plugins import execute_script_type

    return make_world(server_db, extra_plugins=(execute_script_type,))


def run_report(w, **params):
    a = w.create("activity-report", params)
    if w.handler is None:
        w.start_handler()
    w.publish()
    w.pump(1)
    got = w.get(a.id)
    assert got.state == "succeeded", got.result_text
    csv_out = w.db.run_sync(w.db.joboutputs.get_thd, a.id, "activities.csv")
    json_out = w.db.run_sync(w.db.joboutputs.get_thd, a.id, "activities.json")
    rows = list(csv.DictReader(io.StringIO(csv_out.data.decode())))
    return got, rows, json.loads(json_out.data), csv_out, json_out


def test_report_filters_by_state_type_computer_and_time(world):
    db = world.db
    c1 = db.run_sync(db.computers.create_thd, NewComputer(title="a", hostname="a", account_name="x",
                                                         secure_id=b"1", accepted=True), world.now).id
    c2 = db.run_sync(db.computers.create_thd, NewComputer(title="b", hostname="b", account_name="x",
                                                         secure_id=b"2", accepted=True), world.now).id
    script = {"code": "#!/bin/sh\necho 'a,\"quoted\"'", "username": "root"}

    def client(cid, summary):
        return db.run_sync(db.activities.create_thd, NewActivity(kind="client", type="execute-script",
                                                                parameters=script, creator="admin",
                                                                summary=summary, computer_ids=[cid]), world.now).id

    early = client(c1, "early, with a comma")
    world.pump(3600)
    on_c1 = client(c1, "one")
    on_c2 = client(c2, "two")
    db.run_sync(db.activities.apply_verb_thd, on_c2, "cancel", actor="admin", now=world.now)
    world.pump(60)

    got, rows, doc, csv_out, json_out = run_report(world, type="execute-script")
    assert [int(r["id"]) for r in rows] == [on_c2, on_c1, early]
    assert rows[2]["summary"] == "early, with a comma"  # quoted properly
    assert csv_out.info.content_type.startswith("text/csv") and json_out.info.content_type == "application/json"
    assert doc["count"] == 3 and [a["id"] for a in doc["activities"]] == [on_c2, on_c1, early]
    assert "3 activities" in got.result_text

    _, rows, doc, _, _ = run_report(world, computer_id=c1)
    assert [int(r["id"]) for r in rows] == [on_c1, early]
    _, rows, _, _, _ = run_report(world, state="canceled")
    assert [(int(r["id"]), r["result_name"]) for r in rows] == [(on_c2, "canceled")]
    after = (world.now - dt.timedelta(minutes=30)).isoformat()
    _, rows, doc, _, _ = run_report(world, created_after=after, type="execute-script")
    assert [int(r["id"]) for r in rows] == [on_c2, on_c1]
    assert doc["filters"]["created_after"].startswith(after[:16])


def test_max_rows_truncates_and_says_so(world):
    for _ in range(5):
        world.create("test-job", {}, requires_approval=True)  # stays blocked
    world.pump(1)
    got, rows, doc, _, _ = run_report(world, type="test-job", max_rows=2)
    assert len(rows) == 2 and doc["truncated"] is True and doc["matching"] == 5
    assert "max_rows" in got.result_text


def test_bad_parameters_are_refused(world):
    types = world.context.plugins
    with pytest.raises(ParameterError) as e:
        types.validate("activity-report", {"created_after": "yesterday"})
    assert e.value.field == "parameters.created_after"
    with pytest.raises(ParameterError) as e:
        types.validate("activity-report", {"state": "done"})
    assert e.value.field == "parameters.state"
    with pytest.raises(ParameterError):
        types.validate("activity-report", {"created_after": "2026-01-02", "created_before": "2026-01-01"})
    assert types.validate("activity-report", {"created_after": "2026-01-02T00:00:00"}) == {
        "created_after": "2026-01-02T00:00:00+00:00"}


def test_report_times_are_spelled_as_the_api_spells_them(world):
    a = world.create("test-job", {}, requires_approval=True)
    world.pump(1)
    got, rows, doc, _, _ = run_report(world, type="test-job", created_after="2000-01-01T00:00:00Z")
    created = world.get(a.id).created_at
    expected = created.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    (row,) = rows
    assert row["created_at"] == expected and row["delivered_at"] == ""
    assert doc["activities"][0]["created_at"] == expected
    assert doc["generated_at"].endswith("Z") and doc["filters"]["created_after"] == "2000-01-01T00:00:00Z"
    assert "+00:00" not in json.dumps(doc)
