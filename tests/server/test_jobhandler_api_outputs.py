"""``GET /api/v1/activities/{id}/output[/{name}]``: job outputs served from the
database through the REST API (StubTreq, Clock, real SQLite)."""

from __future__ import annotations

import pytest

from server.db.activities import NewActivity

from api_support import NOW, Api, fired


@pytest.fixture
def api(sqlite_server_db):
    return Api(sqlite_server_db)


def raw_get(api, path, key="default"):
    headers = {"Authorization": f"Bearer {api.key if key == 'default' else key}"} if key else {}
    d = api.treq.get("http://ridgeline.test/api/v1" + path, headers=headers)
    api.treq.flush()
    response = fired(d)
    return response, fired(response.content())


def make_activity(api):
    return api.db.run_sync(api.db.activities.create_thd,
                           NewActivity(kind="server", type="report", parameters={}, creator="admin"), NOW).id


def test_list_and_fetch_outputs(api):
    aid = make_activity(api)
    code, body = api.get(f"/activities/{aid}/output")
    assert (code, body) == (200, {"activity_id": aid, "outputs": []})
    api.db.run_sync(api.db.joboutputs.store_thd, aid, "activities.csv", b"id,state\n1,queued\n",
                    "text/csv; charset=utf-8", now=NOW, max_total=1000)
    api.db.run_sync(api.db.joboutputs.store_thd, aid, "activities.json", b'{"count": 1}', "application/json",
                    now=NOW, max_total=1000)
    code, body = api.get(f"/activities/{aid}/output")
    assert code == 200
    assert [(o["name"], o["content_type"], o["size"]) for o in body["outputs"]] == [
        ("activities.csv", "text/csv; charset=utf-8", len(b"id,state\n1,queued\n")), ("activities.json", "application/json", 12)]
    assert body["outputs"][0]["url"] == f"/api/v1/activities/{aid}/output/activities.csv"
    response, data = raw_get(api, f"/activities/{aid}/output/activities.csv")
    assert response.code == 200 and data == b"id,state\n1,queued\n"
    assert response.headers.getRawHeaders(b"content-type") == [b"text/csv; charset=utf-8"]


def test_missing_activity_or_output_is_404_json(api):
    code, body = api.get("/activities/999/output")
    assert code == 404 and "error" in body
    aid = make_activity(api)
    code, body = api.get(f"/activities/{aid}/output/nope.csv")
    assert code == 404 and "nope.csv" in body["error"]["message"]


def test_outputs_need_a_key(api):
    aid = make_activity(api)
    response, _ = raw_get(api, f"/activities/{aid}/output", key=None)
    assert response.code == 401


def test_outputs_are_in_the_openapi_document(api):
    code, doc = api.get("/openapi.json")
    assert code == 200
    assert "get" in doc["paths"]["/activities/{activity_id}/output"]
    assert "get" in doc["paths"]["/activities/{activity_id}/output/{name}"]
    assert "JobOutput" in doc["components"]["schemas"]
