"""server.activityservice used directly (as jobs and reapply do), the built-in
execute-script type's message, and the attachments store on SQLite and PostgreSQL."""

import hashlib

import pytest
from twisted.internet import defer

from api_support import NOW, Api, fired
from plugins import execute_script_type
from protocol import messages
from server import activityservice
from server.activityservice import RequestError
from server.db import attach_components
from server.db.attachments import AttachmentNotFound
from server.hookspecs import Delivery, ParameterError


def run(coro):
    return fired(defer.Deferred.fromCoroutine(coro))


def test_create_activities_as_a_job_would(sqlite_server_db):
    api = Api(sqlite_server_db)
    cids = api.computers(2, tags=["fleet"])
    a = run(activityservice.create_activities(api.context, {**api.script(), "computer_tags": ["fleet"]},
                                              "job:7"))
    assert a.is_group and a.children_count == 2 and a.creator == "job:7"
    assert a.deliver_before == NOW.replace(day=8)
    with pytest.raises(RequestError) as e:
        run(activityservice.create_activities(api.context, api.script([cids[0], 555]), "job:7"))
    assert (e.value.status, e.value.code, e.value.field) == (400, "invalid", "computer_ids")
    assert "555" in e.value.message


def test_parse_time():
    assert activityservice.parse_time("2026-01-02T03:04:05Z", "t").isoformat() == "2026-01-02T03:04:05+00:00"
    assert activityservice.parse_time("2026-01-02T05:04:05+02:00", "t").isoformat() == "2026-01-02T03:04:05+00:00"
    assert activityservice.parse_time("2026-01-02 03:04", "t").isoformat() == "2026-01-02T03:04:00+00:00"
    with pytest.raises(RequestError) as e:
        activityservice.parse_time("2026-13-01", "deliver_after")
    assert e.value.field == "deliver_after"


# --- execute-script ---------------------------------------------------------------------


def delivery(params, env=None, activity_id=42):
    class A:
        id = activity_id
        parameters = params

    return Delivery(activity=A(), computer_id=3, account_name="standalone",
                    env=env or {"LANDSCAPE_COMPUTER_ID": "3", "LANDSCAPE_ACTIVITY_ID": str(activity_id)})


def test_interpreter_from_shebang_and_message_without_it():
    params = execute_script_type.validate({"code": "#!/usr/bin/python3 -u\nprint(1)\n", "username": "u"})
    assert params["interpreter"] == "/usr/bin/python3 -u"
    message = execute_script_type.to_message(delivery(params))
    assert message["code"] == "print(1)\n" and message["interpreter"] == "/usr/bin/python3 -u"
    assert message["operation-id"] == 42 and message["time-limit"] is None and message["attachments"] == {}
    assert messages.validate_server_message(message)["type"] == "execute-script"


def test_explicit_interpreter_wins_and_env_merges():
    params = execute_script_type.validate({"code": "#!/bin/sh\necho", "username": "u", "interpreter": "/bin/bash",
                                           "time_limit": 30, "env": {"A": "1"}, "attachments": {"f.txt": 9}})
    message = execute_script_type.to_message(delivery(params))
    assert message["interpreter"] == "/bin/bash" and message["code"] == "echo"
    assert message["env"] == {"A": "1", "LANDSCAPE_COMPUTER_ID": "3", "LANDSCAPE_ACTIVITY_ID": "42"}
    assert message["time-limit"] == 30 and message["attachments"] == {"f.txt": 9}


def test_code_without_shebang_keeps_every_line():
    params = execute_script_type.validate({"code": "echo one\necho two", "username": "u", "interpreter": "/bin/sh"})
    assert execute_script_type.to_message(delivery(params))["code"] == "echo one\necho two"


def test_neither_interpreter_nor_shebang_is_refused():
    with pytest.raises(ParameterError) as e:
        execute_script_type.validate({"code": "echo", "username": "u"})
    assert e.value.field == "parameters.interpreter"


def test_landscape_variables_cannot_be_set_by_a_request(sqlite_server_db):
    api = Api(sqlite_server_db)
    (cid,) = api.computers(1)
    body = api.script([cid])
    body["parameters"]["env"] = {"LANDSCAPE_COMPUTER_ID": "1"}
    code, err = api.post("/activities", body)
    assert code == 400 and err["error"]["field"].startswith("parameters.env")


# --- attachments store (both databases) ---------------------------------------------------


def test_attachments_store(server_db):
    db = attach_components(server_db)
    a = fired(db.attachments.create("x.bin", b"abc", "admin", NOW))
    assert (a.name, a.size, a.sha256) == ("x.bin", 3, hashlib.sha256(b"abc").hexdigest())
    assert fired(db.attachments.get(a.id)) == a
    assert db.run_sync(db.attachments.data_thd, a.id) == b"abc"
    assert db.run_sync(db.attachments.existing_ids_thd, [a.id, a.id + 1]) == {a.id}
    with pytest.raises(AttachmentNotFound):
        fired(db.attachments.get(a.id + 1))
