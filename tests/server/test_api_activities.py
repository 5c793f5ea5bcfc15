"""REST API /activities: create (single, group, by ids and tags), validation that
changes nothing, listing and paging, detail with history, verbs with 409s,
reapply, and the server-kind publish hook. Real SQLite, StubTreq, a Clock."""

import datetime as dt

import pytest

from api_support import NOW, Api, api  # noqa: F401  (api is a fixture)
from protocol import codes
from server.config import ServerConfig


def test_create_single_activity(api):
    (cid,) = api.computers(1)
    code, a = api.post("/activities", api.script([cid], summary="say hi"))
    assert code == 201, a
    assert api.last.headers.getRawHeaders("location") == [f"/api/v1/activities/{a['id']}"]
    assert (a["kind"], a["type"], a["state"], a["computer_id"], a["is_group"]) == (
        "client", "execute-script", "queued", cid, False)
    assert a["creator"] == "admin" and a["summary"] == "say hi"
    assert a["parameters"]["interpreter"] == "/bin/sh"
    assert a["created_at"] == "2026-12-01T12:00:00Z"
    # The server's default expiry (7 days) applies when no deliver_before is given.
    assert a["deliver_before"] == "2026-12-08T12:00:00Z"
    assert a["result_code"] is None and a["result_name"] is None and a["progress"] == 0
    assert "children_count" not in a


def test_default_expiry_counts_from_deliver_after_and_follows_the_setting(sqlite_server_db):
    api = Api(sqlite_server_db, ServerConfig(default_expiry=3600))
    (cid,) = api.computers(1)
    code, a = api.post("/activities", api.script([cid], deliver_after="2026-12-02T00:00:00"))
    assert code == 201, a
    # A time without a zone is UTC.
    assert (a["state"], a["deliver_after"], a["deliver_before"]) == (
        "scheduled", "2026-12-02T00:00:00Z", "2026-12-02T01:00:00Z")


def test_times_with_an_offset_are_stored_as_utc(api):
    (cid,) = api.computers(1)
    code, a = api.post("/activities", api.script([cid], deliver_after="2026-12-02T02:00:00+02:00",
                                                   deliver_before="2026-12-03T00:00:00Z"))
    assert code == 201, a
    assert (a["deliver_after"], a["deliver_before"]) == ("2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z")


def test_group_by_ids_returns_the_parent_and_creates_one_child_each(api):
    cids = api.computers(4)
    code, parent = api.post("/activities", api.script(cids, deliver_delay_window=600))
    assert code == 201, parent
    assert parent["is_group"] and parent["children_count"] == 4 and parent["counts"]["scheduled"] == 4
    assert parent["computer_id"] is None and parent["state"] == "scheduled"
    code, page = api.get(f"/activities?parent_id={parent['id']}")
    assert code == 200 and page["count"] == 4
    assert sorted(c["computer_id"] for c in page["results"]) == sorted(cids)
    for child in page["results"]:
        assert 0 <= child["deliver_delay"] < 600 and child["parent_id"] == parent["id"]


def test_group_by_tags_matches_computers_having_any_tag(api):
    web = api.computers(3, tags=["web"])
    db = api.computers(2, tags=["db", "backup"])
    api.computers(2, tags=["other"])
    code, parent = api.post("/activities", {**api.script(), "computer_tags": ["web", "backup"]})
    assert code == 201, parent
    _, page = api.get(f"/activities?parent_id={parent['id']}")
    assert sorted(c["computer_id"] for c in page["results"]) == sorted(web + db)


def test_a_computer_named_twice_gets_one_activity(api):
    (cid,) = api.computers(1, tags=["web"])
    code, a = api.post("/activities", {**api.script([cid, cid]), "computer_tags": ["web"]})
    assert code == 201 and not a["is_group"] and a["computer_id"] == cid


BAD_REQUESTS = [
    ("no type", lambda c: {"parameters": {}, "computer_ids": c}, "type"),
    ("unknown type", lambda c: {"type": "nope", "computer_ids": c}, "type"),
    ("unknown field", lambda c: {"type": "execute-script", "computer_id": c}, "computer_id"),
    ("parameters not an object", lambda c: {"type": "execute-script", "parameters": [], "computer_ids": c},
     "parameters"),
    ("missing username", lambda c: {"type": "execute-script", "parameters": {"code": "#!/bin/sh\n"},
                                    "computer_ids": c}, "parameters.username"),
    ("no interpreter", lambda c: {"type": "execute-script", "parameters": {"code": "echo", "username": "root"},
                                  "computer_ids": c}, "parameters.interpreter"),
    ("relative #! interpreter", lambda c: {"type": "execute-script",
                                           "parameters": {"code": "#!sh\necho", "username": "root"},
                                           "computer_ids": c}, "parameters.interpreter"),
    ("time_limit not int", lambda c: {"type": "execute-script", "parameters": {
        "code": "#!/bin/sh", "username": "root", "time_limit": "10"}, "computer_ids": c}, "parameters.time_limit"),
    ("env value not str", lambda c: {"type": "execute-script", "parameters": {
        "code": "#!/bin/sh", "username": "root", "env": {"A": 1}}, "computer_ids": c}, "parameters.env.A"),
    ("unknown parameter", lambda c: {"type": "execute-script", "parameters": {
        "code": "#!/bin/sh", "username": "root", "colour": "red"}, "computer_ids": c}, "parameters.colour"),
    ("no computers", lambda c: {"type": "execute-script", "parameters": {"code": "#!/bin/sh", "username": "r"}},
     "computer_ids"),
    ("computer_ids not a list", lambda c: {**_s(), "computer_ids": c[0]}, "computer_ids"),
    ("computer id not int", lambda c: {**_s(), "computer_ids": [str(c[0])]}, "computer_ids.0"),
    ("bool computer id", lambda c: {**_s(), "computer_ids": [True]}, "computer_ids.0"),
    ("empty tag", lambda c: {**_s(), "computer_tags": [""]}, "computer_tags.0"),
    ("server type with computers", lambda c: {"type": "report", "computer_ids": c}, "computer_ids"),
    ("summary not str", lambda c: {**_s(), "computer_ids": c, "summary": 3}, "summary"),
    ("bad time", lambda c: {**_s(), "computer_ids": c, "deliver_after": "tomorrow"}, "deliver_after"),
    ("time not str", lambda c: {**_s(), "computer_ids": c, "deliver_after": 1700000000}, "deliver_after"),
    ("past deliver_before", lambda c: {**_s(), "computer_ids": c, "deliver_before": "2026-12-01T11:00:00Z"},
     "deliver_before"),
    ("deliver_before before deliver_after", lambda c: {
        **_s(), "computer_ids": c, "deliver_after": "2026-12-03T00:00:00Z",
        "deliver_before": "2026-12-02T00:00:00Z"}, "deliver_before"),
    ("negative window", lambda c: {**_s(), "computer_ids": c, "deliver_delay_window": -1}, "deliver_delay_window"),
    ("approval not bool", lambda c: {**_s(), "computer_ids": c, "requires_approval": "yes"}, "requires_approval"),
    ("wait_for not object", lambda c: {**_s(), "computer_ids": c, "wait_for": 1}, "wait_for"),
    ("wait_for without id", lambda c: {**_s(), "computer_ids": c, "wait_for": {}}, "wait_for.activity_id"),
    ("wait_for unknown id", lambda c: {**_s(), "computer_ids": c, "wait_for": {"activity_id": 999}},
     "wait_for.activity_id"),
    ("threshold over 100", lambda c: {**_s(), "computer_ids": c, "wait_for": {"activity_id": 1, "threshold": 101}},
     "wait_for.threshold"),
    ("missing computer", lambda c: {**_s(), "computer_ids": [c[0], 4242]}, "computer_ids"),
    ("pending computer", lambda c: {**_s(), "computer_ids": c + [c[-1] + 1]}, "computer_ids"),
    ("tag matching nothing", lambda c: {**_s(), "computer_tags": ["nowhere"]}, "computer_tags"),
    ("missing attachment", lambda c: {"type": "execute-script", "computer_ids": c, "parameters": {
        "code": "#!/bin/sh", "username": "root", "attachments": {"data.txt": 77}}}, "parameters.attachments.data.txt"),
    ("attachment name with slash", lambda c: {"type": "execute-script", "computer_ids": c, "parameters": {
        "code": "#!/bin/sh", "username": "root", "attachments": {"a/b": 1}}}, "parameters.attachments"),
]


def _s():
    return {"type": "execute-script", "parameters": {"code": "#!/bin/sh\necho", "username": "root"}}


@pytest.mark.parametrize("name,make,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_400_naming_the_field_and_change_nothing(api, name, make, field):
    cids = api.computers(2)
    api.computers(1, accepted=False)  # the pending one is cids[-1] + 1
    api.post("/activities", _s() | {"computer_ids": cids[:1]})  # activity 1 exists
    before = api.snapshot()
    code, body = api.post("/activities", make(cids))
    assert code == 400, body
    assert body["error"]["code"] == "invalid" and body["error"]["field"] == field, body
    assert body["error"]["message"]
    assert api.snapshot() == before


def test_missing_and_pending_computers_are_named(api):
    cids = api.computers(1)
    (pending,) = api.computers(1, accepted=False)
    code, body = api.post("/activities", api.script(cids + [9001, 9002]))
    assert code == 400 and "9001" in body["error"]["message"] and "9002" in body["error"]["message"]
    code, body = api.post("/activities", api.script(cids + [pending]))
    assert code == 400 and str(pending) in body["error"]["message"] and "pending" in body["error"]["message"]


def test_malformed_json_is_400_and_changes_nothing(api):
    api.computers(1)
    before = api.counts()
    for raw in (b"{not json", b"", b"\xff\xfe", b"[1, 2"):
        code, body = api.request("POST", "/activities", raw=raw)
        assert code == 400 and body["error"]["code"] == "invalid-json", raw
    code, body = api.post("/activities", [1, 2])
    assert code == 400 and body["error"]["code"] == "invalid"
    assert api.counts() == before


def test_a_script_over_the_size_limit_is_413_naming_code(sqlite_server_db):
    api = Api(sqlite_server_db, ServerConfig(script_max_size=100))
    (cid,) = api.computers(1)
    before = api.counts()
    code, body = api.post("/activities", {"type": "execute-script", "computer_ids": [cid], "parameters": {
        "code": "#!/bin/sh\n" + "é" * 60, "username": "root"}})  # 60 characters, 120 bytes
    assert code == 413 and body["error"] == {"code": "too-large", "field": "parameters.code",
                                             "message": body["error"]["message"]}
    assert "100 bytes" in body["error"]["message"]
    assert api.counts() == before
    code, _ = api.post("/activities", {"type": "execute-script", "computer_ids": [cid], "parameters": {
        "code": "#!/bin/sh\n" + "x" * 90, "username": "root"}})
    assert code == 201


def test_initial_states_from_request(api):
    (cid,) = api.computers(1)
    _, first = api.post("/activities", api.script([cid]))
    _, approval = api.post("/activities", api.script([cid], requires_approval=True))
    _, waiting = api.post("/activities", api.script([cid], wait_for={"activity_id": first["id"], "threshold": 50}))
    assert (approval["state"], approval["blocked_reason"]) == ("blocked", "approval")
    assert waiting["state"] == "waiting" and waiting["wait_for"] == {"activity_id": first["id"], "threshold": 50}
    assert first["wait_for"] is None


def test_list_filters_and_pages(api):
    cids = api.computers(3)
    made = [api.post("/activities", api.script([cid]))[1]["id"] for cid in cids]
    api.clock.advance(3600)
    _, later = api.post("/activities", api.script([cids[0]], requires_approval=True))
    code, page = api.get("/activities")
    assert code == 200 and page["count"] == 4 and page["next"] is None
    assert [a["id"] for a in page["results"]] == [later["id"], *reversed(made)]  # newest first
    assert api.get("/activities?state=blocked")[1]["count"] == 1
    assert api.get("/activities?type=execute-script")[1]["count"] == 4
    assert api.get("/activities?type=report")[1]["count"] == 0
    assert api.get(f"/activities?computer_id={cids[0]}")[1]["count"] == 2
    assert api.get("/activities?created_after=2026-12-01T12:30:00Z")[1]["count"] == 1
    assert api.get("/activities?created_before=2026-12-01T12:30:00")[1]["count"] == 3
    code, page = api.get("/activities?limit=3")
    assert len(page["results"]) == 3 and page["next"] is not None
    assert page["next"].startswith("http://ridgeline.test/api/v1/activities?")
    code, rest = api.get(page["next"])
    assert code == 200 and [a["id"] for a in rest["results"]] == [made[0]] and rest["next"] is None
    code, filtered = api.get("/activities?state=queued&limit=2")
    assert "state=queued" in filtered["next"]


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("limit=ten", "limit"),
    ("state=running", "state"), ("created_after=yesterday", "created_after"), ("colour=red", "colour"),
    ("computer_id=x", "computer_id"), ("state=queued&state=failed", "state"),
])
def test_bad_list_queries_are_400(api, query, field):
    code, body = api.get(f"/activities?{query}")
    assert code == 400 and body["error"]["field"] == field, body


def test_limit_may_be_1000(api):
    assert api.get("/activities?limit=1000")[0] == 200


def test_detail_has_history_and_group_counts(api):
    cids = api.computers(2)
    _, parent = api.post("/activities", api.script(cids))
    _, children = api.get(f"/activities?parent_id={parent['id']}")
    child = children["results"][0]
    api.clock.advance(60)
    assert api.post(f"/activities/{child['id']}/cancel", {"reason": "not needed"})[0] == 200
    code, detail = api.get(f"/activities/{parent['id']}")
    assert code == 200
    assert detail["children_count"] == 2 and detail["counts"]["canceled"] == 1 and detail["counts"]["queued"] == 1
    assert detail["progress"] == 50 and detail["state"] == "in-progress"
    assert [(h["from_state"], h["to_state"]) for h in detail["history"]] == [(None, "queued"),
                                                                             ("queued", "in-progress")]
    code, c = api.get(f"/activities/{child['id']}")
    assert c["state"] == "canceled" and c["result_name"] == "canceled" and c["result_code"] == codes.CANCELED
    assert c["completed_at"] == "2026-12-01T12:01:00Z" and c["progress"] == 100
    assert c["history"][-1] | {"id": 0} == {
        "id": 0, "activity_id": child["id"], "computer_id": child["computer_id"], "at": "2026-12-01T12:01:00Z",
        "event": "transition", "from_state": "queued", "to_state": "canceled", "actor": "admin",
        "reason": "not needed"}


def test_unknown_activity_is_404(api):
    for method, path in [("GET", "/activities/77"), ("POST", "/activities/77/cancel"),
                         ("POST", "/activities/77/approve"), ("POST", "/activities/77/reapply")]:
        code, body = api.request(method, path)
        assert code == 404 and body["error"]["code"] == "not-found", (method, path)


def test_verbs_and_their_409s(api):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid], requires_approval=True))
    path = f"/activities/{a['id']}"
    # Wrong verbs for blocked/approval: 409 with the current state, nothing changed.
    for verb in ("resume", "pause"):
        before = api.snapshot()
        code, body = api.post(f"{path}/{verb}")
        assert code == 409 and body["error"]["code"] == "conflict" and body["error"]["current_state"] == "blocked"
        assert api.snapshot() == before
    code, a = api.post(f"{path}/approve")
    assert code == 200 and a["state"] == "queued" and a["approved_at"] == "2026-12-01T12:00:00Z"
    assert api.post(f"{path}/approve")[1]["error"]["current_state"] == "queued"
    code, a = api.post(f"{path}/pause")
    assert (code, a["state"], a["blocked_reason"]) == (200, "blocked", "paused")
    assert api.post(f"{path}/approve")[0] == 409
    code, a = api.post(f"{path}/resume")
    assert (code, a["state"], a["blocked_reason"]) == (200, "queued", None)
    code, a = api.post(f"{path}/cancel")
    assert (code, a["state"]) == (200, "canceled")
    before = api.snapshot()
    code, body = api.post(f"{path}/cancel")
    assert code == 409 and body["error"]["current_state"] == "canceled"
    assert api.snapshot() == before
    _, detail = api.get(path)
    assert [h["to_state"] for h in detail["history"]] == ["blocked", "queued", "blocked", "queued", "canceled"]


def test_verb_body_is_checked(api):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid]))
    code, body = api.post(f"/activities/{a['id']}/cancel", {"why": "x"})
    assert code == 400 and body["error"]["field"] == "reason"
    assert api.get(f"/activities/{a['id']}")[1]["state"] == "queued"


def test_group_verbs_apply_to_each_child(api):
    cids = api.computers(3)
    _, parent = api.post("/activities", api.script(cids, requires_approval=True))
    code, p = api.post(f"/activities/{parent['id']}/approve")
    assert code == 200 and p["counts"]["queued"] == 3 and p["state"] == "queued"
    code, p = api.post(f"/activities/{parent['id']}/cancel")
    assert code == 200 and p["counts"]["canceled"] == 3 and p["state"] == "canceled"
    code, body = api.post(f"/activities/{parent['id']}/cancel")
    assert code == 409 and body["error"]["current_state"] == "canceled"


def _finish(api, activity_id, status):
    """Deliver a client activity and apply the agent's result through the store."""
    acts = api.db.activities

    def thd(conn):
        acts.transition_thd(conn, activity_id, "queued", "in-progress", actor="exchange", reason="delivered",
                            now=api.now)
        a = acts.get_thd(conn, activity_id)
        return acts.apply_result_thd(conn, computer_id=a.computer_id, operation_id=activity_id, status=status,
                                     result_code=None if status == codes.SUCCEEDED else codes.SCRIPT_FAILED,
                                     result_text="out", now=api.now, actor="agent")

    return api.db.run_sync(thd)


def test_reapply_a_canceled_activity(api):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid], summary="s"))
    code, body = api.post(f"/activities/{a['id']}/reapply")
    assert code == 409 and body["error"]["current_state"] == "queued"
    api.post(f"/activities/{a['id']}/cancel")
    code, again = api.post(f"/activities/{a['id']}/reapply")
    assert code == 201, again
    assert again["origin_id"] == a["id"] and again["id"] != a["id"] and again["state"] == "queued"
    assert (again["type"], again["parameters"], again["computer_id"], again["summary"]) == (
        a["type"], a["parameters"], cid, "s")


def test_reapply_refuses_succeeded_and_provisional_cancels(api):
    cids = api.computers(2)
    _, ok = api.post("/activities", api.script(cids[:1]))
    _finish(api, ok["id"], codes.SUCCEEDED)
    assert api.post(f"/activities/{ok['id']}/reapply")[1]["error"]["current_state"] == "succeeded"
    _, running = api.post("/activities", api.script(cids[1:]))
    api.db.run_sync(api.db.activities.transition_thd, running["id"], "queued", "in-progress", actor="x",
                    reason="delivered", now=api.now)
    assert api.post(f"/activities/{running['id']}/cancel")[1]["cancel_provisional"] is True
    before = api.counts()
    code, body = api.post(f"/activities/{running['id']}/reapply")
    assert code == 409 and "provisional" in body["error"]["message"]
    assert api.counts() == before


def test_reapply_a_group_reapplies_its_failed_and_canceled_children(api):
    cids = api.computers(4)
    _, parent = api.post("/activities", api.script(cids))
    children = sorted(api.get(f"/activities?parent_id={parent['id']}")[1]["results"], key=lambda c: c["id"])
    _finish(api, children[0]["id"], codes.SUCCEEDED)
    _finish(api, children[1]["id"], codes.FAILED)
    api.post(f"/activities/{children[2]['id']}/cancel")
    code, new = api.post(f"/activities/{parent['id']}/reapply")
    assert code == 201, new
    assert new["is_group"] and new["children_count"] == 2 and new["origin_id"] == parent["id"]
    _, page = api.get(f"/activities?parent_id={new['id']}")
    assert sorted((c["computer_id"], c["origin_id"]) for c in page["results"]) == sorted(
        (c["computer_id"], c["id"]) for c in children[1:3])


def test_reapply_a_group_with_one_failed_child_makes_a_single_activity(api):
    cids = api.computers(2)
    _, parent = api.post("/activities", api.script(cids))
    children = api.get(f"/activities?parent_id={parent['id']}")[1]["results"]
    api.post(f"/activities/{children[0]['id']}/cancel")
    code, new = api.post(f"/activities/{parent['id']}/reapply")
    assert code == 201 and not new["is_group"]
    assert (new["computer_id"], new["origin_id"]) == (children[0]["computer_id"], children[0]["id"])
    # A group whose children all still run has nothing to reapply.
    _, other = api.post("/activities", api.script(cids))
    assert api.post(f"/activities/{other['id']}/reapply")[0] == 409


def test_reapply_for_a_removed_computer_is_400(api):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid]))
    assert api.delete(f"/computers/{cid}")[0] == 200
    before = api.counts()
    code, body = api.post(f"/activities/{a['id']}/reapply")
    assert code == 400 and body["error"]["field"] == "computer_ids"
    assert api.counts() == before


class RecordingQueue:
    def __init__(self):
        self.calls = 0

    def publish_pending(self):
        self.calls += 1


def test_a_queued_server_activity_is_published(sqlite_server_db):
    queue = RecordingQueue()
    api = Api(sqlite_server_db, queue=queue)
    code, a = api.post("/activities", {"type": "report", "parameters": {"title": "t"}})
    assert code == 201 and (a["kind"], a["state"], a["computer_id"]) == ("server", "queued", None)
    assert queue.calls == 1
    # Not published while blocked; published once approved... by whoever approves
    # (the queue's sweep); client activities are never published.
    api.post("/activities", {"type": "report", "requires_approval": True})
    (cid,) = api.computers(1)
    api.post("/activities", api.script([cid]))
    assert queue.calls == 1


def test_server_activity_without_a_queue_is_created(api):
    code, a = api.post("/activities", {"type": "report"})
    assert code == 201 and a["state"] == "queued" and a["parameters"] == {}


@pytest.mark.parametrize("body", [{"reason": "again"}, {"summary": "x"}, [], "x", 1])
def test_reapply_refuses_a_body_and_changes_nothing(api, body):
    (cid,) = api.computers(1)
    _, a = api.post("/activities", api.script([cid]))
    api.post(f"/activities/{a['id']}/cancel")
    before = api.snapshot()
    code, reply = api.post(f"/activities/{a['id']}/reapply", body)
    assert code == 400 and reply["error"]["code"] == "invalid" and "no body" in reply["error"]["message"]
    assert api.snapshot() == before
    # Without a body (or with an empty object) it is done.
    assert api.post(f"/activities/{a['id']}/reapply", {})[0] == 201
