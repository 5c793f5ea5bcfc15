"""``purge-activities`` on SQLite and PostgreSQL: what goes, with what, and what
must stay (young, not final, group bookkeeping, referenced activities)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from server.db.activities import NewActivity
from server.db.computers import NewComputer
from server.db.tables import (activities, activity_attachments, activity_history, attachments, job_outputs,
                              job_queue, outbox)

from jobs_plugin_support import make_world

DAY = dt.timedelta(days=1)


@pytest.fixture
def world(server_db):
    from plugins import execute_script_type

    return make_world(server_db, extra_plugins=(execute_script_type,))


def exists(w, aid) -> bool:
    return w.db.run_sync(lambda c: c.execute(sa.select(activities.c.id).where(activities.c.id == aid)).first()) is not None


def count(w, table, **where) -> int:
    return w.db.run_sync(lambda c: c.execute(sa.select(sa.func.count()).select_from(table).where(
        *[table.c[k] == v for k, v in where.items()])).scalar())


def test_purge_deletes_old_final_activities_and_keeps_what_must_stay(world):
    w, db = world, world.db
    cids = [db.run_sync(db.computers.create_thd, NewComputer(title=f"c{i}", hostname=f"c{i}", account_name="x",
                                                            secure_id=f"s{i}".encode(), accepted=True), w.now).id
            for i in range(2)]
    script = {"code": "#!/bin/sh\ntrue", "username": "root"}

    def client(cids_, **kw):
        return db.run_sync(db.activities.create_thd, NewActivity(kind="client", type="execute-script",
                                                                parameters=script, creator="a",
                                                                computer_ids=cids_, **kw), w.now)

    def finish(aid, to="succeeded"):
        a = db.run_sync(db.activities.get_thd, aid)
        if a.state == "queued" and to != "canceled":
            db.run_sync(db.activities.transition_thd, aid, "queued", "in-progress", actor="t", reason="t", now=w.now)
        if to == "canceled":
            db.run_sync(db.activities.apply_verb_thd, aid, "cancel", actor="t", now=w.now)
        else:
            db.run_sync(db.activities.transition_thd, aid, "in-progress", to, actor="t", reason="t", now=w.now)

    # 40 days ago.
    old_single = w.create("test-job").id
    finish(old_single)
    db.run_sync(db.joboutputs.store_thd, old_single, "r.txt", b"data", "text/plain", now=w.now, max_total=100)
    att = db.run_sync(lambda c: c.execute(attachments.insert().returning(attachments.c.id).values(
        name="f", size=1, sha256="0" * 64, data=b"x", creator="a", created_at=w.now)).scalar())
    db.run_sync(lambda c: c.execute(activity_attachments.insert().values(activity_id=old_single, attachment_id=att)))
    db.run_sync(lambda c: c.execute(job_queue.insert().values(activity_id=old_single, enqueued_at=w.now)))
    group = client(cids)
    kids = [a.id for a in db.run_sync(db.activities.children_thd, group.id)]
    for k in kids:
        finish(k)
    half_group = client(cids)
    half_kids = [a.id for a in db.run_sync(db.activities.children_thd, half_group.id)]
    finish(half_kids[0], "failed")  # the other stays queued: the parent is not final
    prerequisite = w.create("test-job").id
    finish(prerequisite)
    origin = w.create("test-job").id
    finish(origin, "failed")
    provisional = client([cids[0]]).id
    db.run_sync(db.activities.transition_thd, provisional, "queued", "in-progress", actor="t", reason="t", now=w.now)
    db.run_sync(db.activities.apply_verb_thd, provisional, "cancel", actor="t", now=w.now)  # provisional cancel
    not_final_old = w.create("test-job", requires_approval=True).id
    msg = db.run_sync(lambda c: c.execute(outbox.insert().returning(outbox.c.id).values(
        computer_id=cids[0], sequence=1, message=b"m", activity_id=kids[0], created_at=w.now)).scalar())

    w.pump(30 * 86400)
    # 10 days ago: young referrers of old activities.
    waiter = w.create("test-job", wait_for_id=prerequisite, requires_approval=True).id
    db.run_sync(db.activities.apply_verb_thd, waiter, "approve", actor="t", now=w.now)  # -> queued (prereq met)
    db.run_sync(lambda c: c.execute(activities.update().where(activities.c.id == waiter).values(state="waiting")))
    retry = w.create("test-job", origin_id=origin).id
    finish(retry, "failed")
    young = w.create("test-job").id
    finish(young)
    w.pump(10 * 86400)

    purge = w.create("purge-activities", {"older_than_days": 30, "batch_size": 2})
    w.start_handler()
    w.publish()
    w.pump(1)
    got = w.get(purge.id)
    assert got.state == "succeeded", got.result_text

    gone = [old_single, group.id, *kids]
    kept = [half_group.id, *half_kids, prerequisite, origin, provisional, not_final_old, waiter, retry, young,
            purge.id]
    assert [a for a in gone if exists(w, a)] == []
    assert [a for a in kept if not exists(w, a)] == []
    # What hung on the deleted ones went with them; the attachment itself stays.
    for aid in gone:
        assert count(w, activity_history, activity_id=aid) == 0
    assert count(w, job_outputs, activity_id=old_single) == 0
    assert count(w, activity_attachments, activity_id=old_single) == 0 and count(w, attachments, id=att) == 1
    assert count(w, job_queue, activity_id=old_single) == 0
    assert w.db.run_sync(lambda c: c.execute(sa.select(outbox.c.activity_id).where(outbox.c.id == msg)).scalar()) is None
    # The group that stays still adds up.
    hg = w.get(half_group.id)
    assert hg.children_count == 2 and hg.counts["failed"] == 1 and hg.counts["queued"] == 1
    assert got.result_text.startswith("Deleted 4 activities")
    assert w.get(purge.id).progress == 100


def test_purge_of_a_chain_goes_in_later_batches(world):
    w = world
    first = w.create("test-job").id
    w.db.run_sync(w.db.activities.apply_verb_thd, first, "cancel", actor="t", now=w.now)
    second = w.create("test-job", origin_id=first).id
    w.db.run_sync(w.db.activities.apply_verb_thd, second, "cancel", actor="t", now=w.now)
    w.pump(3 * 86400)
    purge = w.create("purge-activities", {"older_than_days": 1})
    w.start_handler()
    w.publish()
    w.pump(1)
    assert w.get(purge.id).state == "succeeded"
    assert not exists(w, first) and not exists(w, second)


def test_purge_parameters(world):
    from server.hookspecs import ParameterError

    types = world.context.plugins
    with pytest.raises(ParameterError) as e:
        types.validate("purge-activities", {})
    assert e.value.field == "parameters.older_than_days"
    with pytest.raises(ParameterError):
        types.validate("purge-activities", {"older_than_days": 0})
