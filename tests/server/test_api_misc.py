"""REST API: authentication, errors (404/405/500 as JSON, never a traceback),
/events, /attachments, /activity-types, /openapi.json coverage, and the server's
composition root putting the activity types into the context."""

import hashlib
import json
import re

import pytest
import sqlalchemy as sa
from treq.testing import StubTreq

from api_support import NOW, Api, api, fired  # noqa: F401
from server.api import make_api
from server.api.routing import Api as RoutingApi, Routes, openapi_path, route
from server.config import ServerConfig
from server.db.tables import activity_attachments


# --- auth -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/activities", "/computers", "/events", "/activity-types", "/openapi.json",
                                  "/activities/1", "/no/such/route"])
def test_every_route_needs_a_key(api, path):
    for headers in ({}, {"Authorization": "Bearer rl_wrong"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer"}):
        code, body = api.request("GET", path, key=None, headers=headers)
        assert code == 401 and body["error"]["code"] == "unauthorized", (path, headers)
        assert api.last.headers.getRawHeaders("www-authenticate")


def test_a_write_without_a_key_changes_nothing(api):
    (cid,) = api.computers(1)
    before = api.counts()
    assert api.post("/activities", api.script([cid]), key=None)[0] == 401
    assert api.delete(f"/computers/{cid}", key="rl_nope")[0] == 401
    assert api.counts() == before


def test_a_revoked_key_is_refused(api):
    assert api.get("/activities")[0] == 200
    fired(api.db.apikeys.revoke("admin", NOW))
    assert api.get("/activities")[0] == 401


def test_healthz_stays_open(api):
    d = api.treq.get("http://ridgeline.test/healthz")
    api.treq.flush()
    assert fired(d).code == 200


# --- errors -------------------------------------------------------------------------


def test_unknown_route_and_wrong_method(api):
    code, body = api.get("/nothing-here")
    assert code == 404 and body == {"error": {"code": "not-found", "message": "no such resource"}}
    code, body = api.delete("/activities")
    assert code == 405 and body["error"]["code"] == "method-not-allowed"
    assert "POST" in api.last.headers.getRawHeaders("allow")[0]
    assert api.request("PATCH", "/computers/1")[0] == 405


class Broken(Routes):
    @route("GET", "/broken", summary="fails", responses={200: ("never", None)})
    async def broken(self, request):
        raise RuntimeError("secret internal detail")


def test_an_unexpected_failure_is_a_json_500_without_details(api, caplog):
    app = RoutingApi(api.context, [Broken])
    treq = StubTreq(app.resource())
    d = treq.get("http://x/broken", headers={"Authorization": f"Bearer {api.key}"})
    treq.flush()
    response = fired(d)
    body = fired(response.content())
    assert response.code == 500
    assert json.loads(body) == {"error": {"code": "internal",
                                          "message": "internal error; the server log has the details"}}
    assert b"secret" not in body and b"Traceback" not in body


def test_a_route_declared_twice_is_refused(api):
    class Twice(Routes):
        @route("GET", "/x", summary="a", responses={200: ("a", None)})
        async def a(self, request):
            return {}

        @route("GET", "/x", summary="b", responses={200: ("b", None)})
        async def b(self, request):
            return {}

    with pytest.raises(ValueError, match="declared twice"):
        RoutingApi(api.context, [Twice])


# --- events -------------------------------------------------------------------------


def test_events_lists_transitions_newest_first_with_filters(api):
    c1, c2 = api.computers(2)
    _, a1 = api.post("/activities", api.script([c1]))
    api.clock.advance(60)
    _, a2 = api.post("/activities", api.script([c2]))
    api.post(f"/activities/{a2['id']}/cancel")
    code, page = api.get("/events")
    assert code == 200 and page["count"] == 3
    assert [(e["activity_id"], e["to_state"]) for e in page["results"]] == [
        (a2["id"], "canceled"), (a2["id"], "queued"), (a1["id"], "queued")]
    assert page["results"][0]["at"] == "2026-12-01T12:01:00Z" and page["results"][0]["actor"] == "admin"
    assert api.get(f"/events?activity_id={a1['id']}")[1]["count"] == 1
    assert api.get(f"/events?computer_id={c2}")[1]["count"] == 2
    assert api.get("/events?after=2026-12-01T12:00:30Z")[1]["count"] == 2
    assert api.get("/events?before=2026-12-01T12:00:30Z")[1]["count"] == 1
    page = api.get("/events?limit=2")[1]
    assert len(page["results"]) == 2 and api.get(page["next"])[1]["results"][0]["activity_id"] == a1["id"]
    for bad in ("after=soon", "activity_id=0", "limit=5000", "who=me"):
        assert api.get(f"/events?{bad}")[0] == 400, bad


# --- attachments ----------------------------------------------------------------------


def test_upload_and_use_an_attachment(api):
    data = b"\x00binary\xffdata"
    code, att = api.request("POST", "/attachments?name=data.bin", raw=data)
    assert code == 201 and att == {"id": att["id"], "name": "data.bin", "size": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest(), "created_at": "2026-12-01T12:00:00Z"}
    cids = api.computers(2)
    code, parent = api.post("/activities", {"type": "execute-script", "computer_ids": cids, "parameters": {
        "code": "#!/bin/sh\ncat data.bin", "username": "root", "attachments": {"data.bin": att["id"]}}})
    assert code == 201, parent
    linked = api.db.run_sync(lambda conn: conn.execute(
        sa.select(activity_attachments.c.activity_id).where(activity_attachments.c.attachment_id == att["id"])
    ).scalars().all())
    assert len(linked) == 3  # the parent and both children
    may = api.db.run_sync(api.db.attachments.computer_may_fetch_thd, cids[0], att["id"])
    (stranger,) = api.computers(1)
    assert may and not api.db.run_sync(api.db.attachments.computer_may_fetch_thd, stranger, att["id"])
    assert api.db.run_sync(api.db.attachments.data_thd, att["id"]) == data


def test_an_empty_attachment_is_allowed(api):
    code, att = api.request("POST", "/attachments?name=empty", raw=b"")
    assert code == 201 and att["size"] == 0


def test_attachment_limits_and_names(sqlite_server_db):
    api = Api(sqlite_server_db, ServerConfig(attachment_max_size=16))
    before = api.counts()
    code, body = api.request("POST", "/attachments?name=big", raw=b"x" * 17)
    assert code == 413 and body["error"]["code"] == "too-large"
    for query, field in [("", "name"), ("?name=", "name"), ("?name=a/b", "name"), ("?name=..", "name"),
                         ("?name=a&other=1", "other")]:
        code, body = api.request("POST", f"/attachments{query}", raw=b"x")
        assert code == 400 and body["error"]["field"] == field, query
    assert api.counts() == before
    assert api.request("POST", "/attachments?name=ok", raw=b"x" * 16)[0] == 201


# --- activity types -------------------------------------------------------------------


def test_activity_types_lists_kinds_and_schemas(api):
    code, body = api.get("/activity-types")
    assert code == 200
    by_name = {t["name"]: t for t in body["results"]}
    script = by_name["execute-script"]
    assert script["kind"] == "client" and script["message_type"] == "execute-script"
    assert set(script["parameters_schema"]["required"]) == {"code", "username"}
    assert script["attachments_parameter"] == "attachments"
    assert by_name["report"]["kind"] == "server" and by_name["report"]["message_type"] is None


# --- OpenAPI --------------------------------------------------------------------------


def served_routes(app) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every rule klein serves, read from its url_map."""
    served = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)))
    return served


def test_openapi_documents_every_served_route_and_nothing_else(api):
    code, doc = api.get("/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.1")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    served = served_routes(make_api(api.context).app)
    assert served == documented
    # The routes the issues ask for are among them.
    for must in [("post", "/activities"), ("get", "/activities"), ("get", "/activities/{activity_id}"),
                 ("post", "/activities/{activity_id}/cancel"), ("post", "/activities/{activity_id}/approve"),
                 ("post", "/activities/{activity_id}/pause"), ("post", "/activities/{activity_id}/resume"),
                 ("post", "/activities/{activity_id}/reapply"), ("get", "/events"), ("post", "/attachments"),
                 ("get", "/computers"), ("get", "/computers/{computer_id}"),
                 ("post", "/computers/{computer_id}/accept"), ("delete", "/computers/{computer_id}"),
                 ("put", "/computers/{computer_id}/tags"), ("get", "/activity-types"), ("get", "/openapi.json")]:
        assert must in documented, must


def test_openapi_operations_are_complete_and_refs_resolve(api):
    doc = api.get("/openapi.json")[1]
    schemas = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc))
    assert refs and all(r in schemas for r in refs), set(refs) - set(schemas)
    for path, ops in doc["paths"].items():
        path_params = set(re.findall(r"{(\w+)}", path))
        for method, op in ops.items():
            assert op["summary"] and op["operationId"], (method, path)
            assert "401" in op["responses"] and "500" in op["responses"]
            assert any(s.startswith("2") for s in op["responses"]), (method, path)
            assert path_params == {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            if path_params:
                assert "404" in op["responses"]
    create = doc["paths"]["/activities"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ActivityRequest"}
    assert "UTC" in schemas["ActivityRequest"]["properties"]["deliver_before"]["description"]
    assert {"413", "400", "201"} <= set(create["responses"])
    # The request schema lists exactly the fields the service accepts.
    from server.activityservice import REQUEST_FIELDS

    assert set(schemas["ActivityRequest"]["properties"]) == REQUEST_FIELDS
    # The Activity schema lists every field the API returns for a group parent.
    (cid, cid2) = api.computers(2)
    parent = api.post("/activities", api.script([cid, cid2]))[1]
    assert set(parent) == set(schemas["Activity"]["properties"])


def test_an_added_route_module_is_served_and_documented(api, monkeypatch):
    import sys
    import types

    class Outputs(Routes):
        @route("GET", "/activities/<int:activity_id>/output", summary="job output",
               responses={200: ("output", None)})
        async def output(self, request, activity_id):
            return {"activity_id": activity_id}

    monkeypatch.setitem(sys.modules, "server.api.outputs", types.SimpleNamespace(ROUTES=Outputs))
    app = make_api(api.context)
    assert ("get", "/activities/{activity_id}/output") in served_routes(app.app)
    assert "/activities/{activity_id}/output" in {s.openapi_path for s in app.routes}


def test_openapi_path_conversion():
    assert openapi_path("/a/<int:x>/b/<y>") == "/a/{x}/b/{y}"


# --- composition root -------------------------------------------------------------------


def test_the_composition_root_puts_activity_types_into_the_context(sqlite_url):
    from twisted.internet.testing import MemoryReactorClock

    from server import service
    from server.db.base import create_engine

    engine = create_engine(sqlite_url)
    try:
        uuid = service.prepare_database(ServerConfig(database_url=sqlite_url, job_handler=False), engine)
        _, context = service.build(MemoryReactorClock(), ServerConfig(database_url=sqlite_url, job_handler=False),
                                   engine, uuid, lambda message: None)
        assert context.plugins.get("execute-script").kind == "client"
    finally:
        engine.dispose()


# --- query parameters -----------------------------------------------------------------


def test_an_unknown_query_parameter_is_400_on_every_route_and_changes_nothing(api):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid]))
    api.post(f"/activities/{a['id']}/cancel")
    doc = api.get("/openapi.json")[1]
    before = api.snapshot()
    ids = {"activity_id": a["id"], "computer_id": cid, "name": "out"}
    routes = [(m, p) for p, ops in doc["paths"].items() for m in ops]
    assert ("get", "/activity-types") in routes and ("get", "/openapi.json") in routes
    for method, path in routes:
        url = re.sub(r"{(\w+)}", lambda m: str(ids[m.group(1)]), path) + "?bogus=1"
        code, body = api.request(method.upper(), url)
        assert (code, body["error"]["field"]) == (400, "bogus"), (method, path, code, body)
        assert "unknown query parameter 'bogus'" in body["error"]["message"]
        # Every route can answer 400 now, and says so.
        assert "400" in doc["paths"][path][method]["responses"], (method, path)
    assert api.snapshot() == before
