"""A third-party job plugin, built in a temporary directory with its
``ridgeline.jobs`` entry point, found by the plugin manager and run by the
job-handler (outputs, progress, cancel)."""

from __future__ import annotations

from jobs_plugin_support import make_world

PLUGIN = {
    "acme_jobs/__init__.py": '''
        from server.hookspecs import ActivityType, JobResult, hookimpl

        async def count_words(job):
            text = job.activity.parameters["text"]
            await job.report_progress(50)
            words = len(text.split())
            await job.store_output("count.txt", str(words).encode(), "text/plain")
            if job.activity.parameters.get("wait"):
                await job.wait_canceled()
                return JobResult("stopped on cancel")
            return f"{words} words"

        class AcmeJobs:
            @hookimpl
            def ridgeline_activity_types(self):
                return [ActivityType(name="acme-count-words", kind="server", run=count_words,
                                     description="counts words",
                                     parameters_schema={"type": "object", "required": ["text"],
                                                        "properties": {"text": {"type": "string"},
                                                                       "wait": {"type": "boolean"}}})]
    ''',
}


def test_third_party_job_plugin_runs(make_distribution, sqlite_server_db):
    make_distribution("acme-jobs", PLUGIN, {"ridgeline.jobs": {"acme": "acme_jobs:AcmeJobs"}})
    w = make_world(sqlite_server_db, load_entry_points=True)
    assert "acme-count-words" in w.context.plugins
    a = w.create("acme-count-words", {"text": "one two three"})
    b = w.create("acme-count-words", {"text": "x", "wait": True})
    w.start_handler()
    w.publish()
    got = w.get(a.id)
    assert (got.state, got.result_text, got.progress) == ("succeeded", "3 words", 100)
    assert w.db.run_sync(w.db.joboutputs.get_thd, a.id, "count.txt").data == b"3"
    assert w.get(b.id).progress == 50
    w.db.run_sync(w.db.activities.apply_verb_thd, b.id, "cancel", actor="admin", now=w.now)
    w.pump()
    assert w.get(b.id).state == "canceled" and w.handler.active_jobs == {}
