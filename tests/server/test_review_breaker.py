"""Defects found by the "new user + breaker" review, each pinned by a test: junk
job results, out-of-range numbers and times in requests, approve/resume of a
server activity waiting for the queue's sweep."""

from __future__ import annotations

import pytest

from server import activityservice
from server.hookspecs import ActivityType, JobResult, hookimpl

from api_support import Api
from jobs_support import make_world

BIG = 2**70  # fits no database integer column


class JunkResults:
    """A job type returning the JobResult its parameters describe (``code`` as
    given, ``text`` and ``failed`` as given), as a careless plugin might."""

    @hookimpl
    def ridgeline_activity_types(self):
        async def run(job):
            p = job.activity.parameters
            return JobResult(text=p.get("text", "t"), code=p.get("code"), failed=p.get("failed", False))

        return [ActivityType(name="junk-job", kind="server", parameters_schema={"type": "object"}, run=run)]


@pytest.mark.parametrize("params, why", [
    ({"code": BIG}, "result code"),
    ({"code": "x"}, "result code"),
    ({"code": True}, "result code"),
    ({"text": 12345}, "text"),
    ({"failed": "no"}, "failed"),
])
def test_a_junk_job_result_fails_the_activity_clearly_and_spares_the_rest_of_its_batch(server_db, params, why):
    w = make_world(server_db, extra_plugins=(JunkResults(),))
    junk = w.create("junk-job", params)
    fine = w.create("test-job", {"do": "ok", "text": "fine"})
    w.start_handler()
    w.publish()
    w.pump(1)
    j, f = w.get(junk.id), w.get(fine.id)
    assert (f.state, f.result_text) == ("succeeded", "fine")
    assert j.state == "failed", j
    assert j.result_code is None
    assert why in j.result_text and "JobResult" in j.result_text
    assert not w.handler.active_jobs


def test_a_huge_job_result_text_is_truncated(server_db):
    w = make_world(server_db, extra_plugins=(JunkResults(),))
    a = w.create("junk-job", {"text": "x" * 50_000})
    w.start_handler()
    w.publish()
    w.pump(1)
    got = w.get(a.id)
    assert got.state == "succeeded" and 0 < len(got.result_text) <= 10_000


@pytest.mark.parametrize("method, path", [
    ("GET", f"/activities/{BIG}"), ("POST", f"/activities/{BIG}/cancel"), ("POST", f"/activities/{BIG}/reapply"),
    ("GET", f"/activities/{BIG}/output"), ("GET", f"/computers/{BIG}"),
])
def test_an_id_too_large_for_the_database_in_a_path_is_404(api_db, method, path):
    code, body = api_db.request(method, path)
    assert code == 404, body
    assert body["error"]["code"] == "not-found"


@pytest.mark.parametrize("extra, field", [
    ({"wait_for": {"activity_id": BIG}}, "wait_for.activity_id"),
    ({"deliver_after": "9999-12-31T23:59:59Z"}, "deliver_after"),
    ({"deliver_before": "9999-12-31T23:59:59Z"}, "deliver_before"),
])
def test_numbers_and_times_out_of_range_in_a_request_are_400(api_db, extra, field):
    before = api_db.snapshot()
    code, body = api_db.post("/activities", {"type": "report", **extra})
    assert code == 400, body
    assert body["error"]["field"] == field
    assert api_db.snapshot() == before


def test_a_computer_id_too_large_for_the_database_is_400(api_db):
    code, body = api_db.post("/activities", api_db.script([BIG]))
    assert code == 400 and body["error"].get("field") == "computer_ids.0", body


def test_activity_report_refuses_a_computer_id_out_of_range(server_db):
    w = make_world(server_db)
    with pytest.raises(activityservice.RequestError) as e:
        activityservice.validate_request(
            w.context, {"type": "activity-report", "parameters": {"computer_id": BIG}}, "admin")
    assert e.value.field == "parameters.computer_id"


class RecordingQueue:
    def __init__(self):
        self.calls = 0

    def publish_pending(self):
        self.calls += 1


@pytest.mark.parametrize("first, verb", [(None, "approve"), ("pause", "resume")])
def test_approve_and_resume_publish_a_server_activity_at_once(sqlite_server_db, first, verb):
    queue = RecordingQueue()
    api = Api(sqlite_server_db, queue=queue)
    code, a = api.post("/activities", {"type": "report", "requires_approval": first is None})
    assert code == 201
    if first:
        assert api.post(f"/activities/{a['id']}/{first}")[1]["state"] == "blocked"
    calls = queue.calls
    code, a = api.post(f"/activities/{a['id']}/{verb}")
    assert code == 200 and a["state"] == "queued"
    assert queue.calls == calls + 1


@pytest.fixture
def api_db(sqlite_server_db):
    return Api(sqlite_server_db)


def test_a_list_filter_may_still_name_a_far_time(api_db):
    code, body = api_db.get("/activities?created_before=9999-12-31T00:00:00Z")
    assert code == 200, body
