"""REST API /computers: list with filters, show, accept, remove (revokes the
secure id and cancels non-final activities in one transaction), tags."""

import sqlalchemy as sa

from api_support import Api, api  # noqa: F401
from server.db.tables import computers


def test_list_show_and_filters(api):
    accepted = api.computers(2, tags=["web"])
    (pending,) = api.computers(1, accepted=False)
    code, page = api.get("/computers")
    assert code == 200 and page["count"] == 3 and page["next"] is None
    first = page["results"][0]
    assert first["id"] == accepted[0] and first["status"] == "accepted" and first["tags"] == ["web"]
    assert first["registered_at"] == "2026-12-01T12:00:00Z" and first["last_seen"] is None
    assert [c["id"] for c in api.get("/computers?status=pending")[1]["results"]] == [pending]
    assert api.get("/computers?tag=web")[1]["count"] == 2
    assert api.get("/computers?tag=none")[1]["count"] == 0
    assert api.get("/computers?status=gone")[0] == 400
    page = api.get("/computers?limit=2")[1]
    assert page["next"] and api.get(page["next"])[1]["results"][0]["id"] == pending
    code, c = api.get(f"/computers/{pending}")
    assert code == 200 and c["status"] == "pending" and c["accepted_at"] is None
    assert api.get("/computers/999")[0] == 404


def test_accept(api):
    (pending,) = api.computers(1, accepted=False)
    api.clock.advance(10)
    code, c = api.post(f"/computers/{pending}/accept")
    assert code == 200 and c["status"] == "accepted" and c["accepted_at"] == "2026-12-01T12:00:10Z"
    # Idempotent.
    assert api.post(f"/computers/{pending}/accept")[1]["accepted_at"] == "2026-12-01T12:00:10Z"
    assert api.post("/computers/999/accept")[0] == 404


def test_remove_revokes_and_cancels_non_final_activities(api):
    cid, other = api.computers(2)
    _, queued = api.post("/activities", api.script([cid]))
    _, blocked = api.post("/activities", api.script([cid], requires_approval=True))
    _, done = api.post("/activities", api.script([cid]))
    api.post(f"/activities/{done['id']}/cancel")
    _, group = api.post("/activities", api.script([cid, other]))
    code, body = api.delete(f"/computers/{cid}")
    assert code == 200 and body["id"] == cid and body["removed_at"] == "2026-12-01T12:00:00Z"
    group_child = [c for c in api.get(f"/activities?parent_id={group['id']}")[1]["results"]
                   if c["computer_id"] == cid][0]
    assert body["canceled_activity_ids"] == [queued["id"], blocked["id"], group_child["id"]]
    for aid in body["canceled_activity_ids"]:
        a = api.get(f"/activities/{aid}")[1]
        assert a["state"] == "canceled" and f"computer {cid} was removed" in a["history"][-1]["reason"]
    # The other computer's child is untouched, and the secure id is gone.
    assert api.get(f"/activities/{group['id']}")[1]["counts"]["queued"] == 1
    secure = api.db.run_sync(lambda conn: conn.execute(
        sa.select(computers.c.secure_id_hash).where(computers.c.id == cid)).scalar())
    assert secure is None
    assert api.get(f"/computers/{cid}")[0] == 404
    assert api.delete(f"/computers/{cid}")[0] == 404
    assert [c["id"] for c in api.get("/computers")[1]["results"]] == [other]


def test_put_tags_replaces_them(api):
    (cid,) = api.computers(1, tags=["old"])
    code, c = api.put(f"/computers/{cid}/tags", {"tags": ["b", "a", "a"]})
    assert code == 200 and c["tags"] == ["a", "b"]
    assert api.get(f"/computers/{cid}")[1]["tags"] == ["a", "b"]
    assert api.put(f"/computers/{cid}/tags", {"tags": []})[1]["tags"] == []
    assert api.put("/computers/999/tags", {"tags": ["x"]})[0] == 404


def test_bad_tags_are_400_and_change_nothing(api):
    (cid,) = api.computers(1, tags=["keep"])
    before = api.counts()
    for body, field in [({"tags": "x"}, "tags"), ({"tags": [""]}, "tags.0"), ({"tags": ["ok", 3]}, "tags.1"),
                        ({"tag": ["x"]}, "tags"), ({"tags": [" padded"]}, "tags.0"), ({"tags": ["x" * 201]}, "tags.0"),
                        ({"tags": [f"t{i}" for i in range(101)]}, "tags")]:
        code, err = api.put(f"/computers/{cid}/tags", body)
        assert code == 400 and err["error"]["field"] == field, body
    assert api.request("PUT", f"/computers/{cid}/tags", raw=b"{")[0] == 400
    assert api.counts() == before
    assert api.get(f"/computers/{cid}")[1]["tags"] == ["keep"]
