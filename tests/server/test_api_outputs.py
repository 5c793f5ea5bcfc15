"""REST ``/activities/{id}/output``: the outputs a job stored, listed and served as bytes."""

from __future__ import annotations

from tests.server.api_support import api, fired  # noqa: F401  (fixture)


def stored(api, activity_id, name, data, content_type):
    api.db.run_sync(api.db.joboutputs.store_thd, activity_id, name, data, content_type, now=api.now,
                    max_total=10**6)


def raw_get(api, path, key="default"):
    headers = {} if key is None else {"Authorization": f"Bearer {api.key}"}
    d = api.treq.request("GET", "http://ridgeline.test/api/v1" + path, headers=headers)
    api.treq.flush()
    response = fired(d)
    return response.code, response.headers.getRawHeaders(b"content-type", [b""])[0], fired(response.content())


def test_outputs_are_listed_and_served_with_their_content_type(api):
    code, job = api.post("/activities", {"type": "report"})
    assert code == 201
    aid = job["id"]
    assert api.get(f"/activities/{aid}/output") == (200, {"results": []})
    csv = "id,state\n1,succeeded\n".encode()
    stored(api, aid, "report.csv", csv, "text/csv; charset=utf-8")
    stored(api, aid, "data.bin", bytes(range(256)), "application/octet-stream")

    code, listing = api.get(f"/activities/{aid}/output")
    assert code == 200
    assert [(o["name"], o["size"], o["content_type"]) for o in listing["results"]] == [
        ("data.bin", 256, "application/octet-stream"), ("report.csv", len(csv), "text/csv; charset=utf-8")]
    assert listing["results"][0]["created_at"].endswith("Z")

    assert raw_get(api, f"/activities/{aid}/output/report.csv") == (200, b"text/csv; charset=utf-8", csv)
    assert raw_get(api, f"/activities/{aid}/output/data.bin") == (200, b"application/octet-stream", bytes(range(256)))


def test_unknown_activity_or_output_is_404_and_a_key_is_needed(api):
    aid = api.post("/activities", {"type": "report"})[1]["id"]
    code, body = api.get(f"/activities/{aid}/output/nothing.csv")
    assert code == 404 and body["error"]["code"] == "not-found" and "nothing.csv" in body["error"]["message"]
    code, body = api.get("/activities/999999/output")
    assert code == 404 and body["error"]["message"] == "no activity 999999"
    assert api.get("/activities/999999/output/x")[0] == 404
    stored(api, aid, "secret.txt", b"s", "text/plain")
    code, _, data = raw_get(api, f"/activities/{aid}/output/secret.txt", key=None)
    assert code == 401 and b"s" != data


def test_the_output_routes_are_documented(api):
    doc = api.get("/openapi.json")[1]
    assert "get" in doc["paths"]["/activities/{activity_id}/output"]
    op = doc["paths"]["/activities/{activity_id}/output/{name}"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"activity_id", "name"}
    assert "OutputInfo" in doc["components"]["schemas"]
