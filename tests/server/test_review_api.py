"""Breaker review of the REST API: inputs that used to reach the database or the
JSON encoder and come back as a 500 (or an HTML page), some after a row was
already written. Each must be a JSON 4xx and change nothing."""

import json

import pytest
from treq.testing import StubTreq

from api_support import api, fired  # noqa: F401
from server.api.routing import Api as RoutingApi, Routes, route


def _refused(api, method, path, body=None, *, status=400, raw=None, headers=None):
    before = api.snapshot()
    code, reply = api.request(method, path, body=body, raw=raw, headers=headers)
    assert code == status, reply
    assert set(reply) == {"error"} and reply["error"]["code"] != "internal", reply
    assert api.snapshot() == before
    return reply["error"]


# --- JSON that json.loads accepts but nothing downstream can use ------------------------


@pytest.mark.parametrize("raw", [b'{"type": "report", "parameters": {}, "summary": NaN}',
                                 b'{"type": "report", "parameters": {}, "summary": Infinity}',
                                 b'{"type": "report", "parameters": {}, "deliver_delay_window": 1e999}',
                                 b'{"type": "report", "parameters": {"title": -Infinity}}'])
def test_json_without_a_json_meaning_is_invalid_json(api, raw):
    error = _refused(api, "POST", "/activities", raw=raw)
    assert error["code"] == "invalid-json"


def test_json_nested_beyond_the_recursion_limit_is_invalid_json(api):
    error = _refused(api, "POST", "/activities", raw=b'{"parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert error["code"] == "invalid-json"


# --- strings that cannot be encoded -----------------------------------------------------


def test_a_lone_surrogate_is_refused_and_nothing_is_stored(api):
    api.computers(1)
    raw = (b'{"type": "execute-script", "computer_ids": [1], '
           b'"parameters": {"code": "#!/bin/sh\\necho \\ud800", "username": "root"}}')
    error = _refused(api, "POST", "/activities", raw=raw)
    assert error["code"] == "invalid-json"
    code, listing = api.get("/activities")
    assert code == 200 and listing["count"] == 0


def test_a_surrogate_pair_is_an_ordinary_character(api):
    api.computers(1)
    raw = (b'{"type": "execute-script", "computer_ids": [1], "summary": "\\ud83d\\ude00", '
           b'"parameters": {"code": "#!/bin/sh\\n", "username": "root"}}')
    code, reply = api.post("/activities", raw=raw)
    assert code == 201 and reply["summary"] == "\U0001F600"


def test_a_repeated_key_is_ambiguous_and_refused(api):
    api.computers(1)
    raw = (b'{"type": "execute-script", "type": "report", "computer_ids": [1], '
           b'"parameters": {"code": "#!/bin/sh\\n", "username": "root"}}')
    error = _refused(api, "POST", "/activities", raw=raw)
    assert error["code"] == "invalid-json" and "'type'" in error["message"]


class Unencodable(Routes):
    @route("GET", "/unencodable", summary="a reply holding a lone surrogate", responses={200: ("never", None)})
    async def unencodable(self, request):
        return {"text": "\ud800"}


def test_a_reply_that_cannot_be_encoded_is_still_a_json_500(api):
    treq = StubTreq(RoutingApi(api.context, [Unencodable]).resource())
    d = treq.get("http://x/unencodable", headers={"Authorization": f"Bearer {api.key}"})
    treq.flush()
    response = fired(d)
    assert response.code == 500
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(fired(response.content())) == {
        "error": {"code": "internal", "message": "internal error; the server log has the details"}}


# --- times out of range -----------------------------------------------------------------


def test_a_report_time_at_the_edge_of_the_calendar_is_400(api):
    from plugins.jobs.report import validate
    from server.hookspecs import ParameterError

    with pytest.raises(ParameterError) as e:
        validate({"created_after": "9999-12-31T23:59:59-01:00"})
    assert e.value.field == "parameters.created_after"


# --- everything is JSON ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_healthz_wrong_method_is_a_json_405(api, method):
    d = api.treq.request(method, "http://ridgeline.test/healthz")
    api.treq.flush()
    response = fired(d)
    body = fired(response.json())
    assert response.code == 405
    assert body["error"]["code"] == "method-not-allowed"
