"""Real ``ridgeline job-handler`` processes: a third-party job plugin from the
``ridgeline.jobs`` entry points, SIGTERM with a grace period, and a process
killed with SIGKILL mid-job whose activity ends ``failed``/``interrupted`` once
its lease expires (swept by another job-handler)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest

from protocol import codes
from server.db import connect, inline_runner, migrate
from server.db.activities import NewActivity

SLOW_PLUGIN = {
    "slowjobs/__init__.py": '''
        from twisted.internet import task
        from server.hookspecs import ActivityType, hookimpl

        async def slow(job):
            await job.report_progress(10)
            await task.deferLater(job.reactor, job.activity.parameters.get("seconds", 1), lambda: None)
            return "slept"

        @hookimpl
        def ridgeline_activity_types():
            return [ActivityType(name="slow-job", kind="server", run=slow,
                                 parameters_schema={"type": "object"})]
    ''',
}


def now():
    return dt.datetime.now(dt.timezone.utc)


def start_handler(plugin_root, env_extra, tmp_path, name):
    env = {**os.environ, "PYTHONPATH": f"{plugin_root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           **env_extra}
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "ridgeline", "job-handler", "--log-level", "debug"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout=30, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def setup_db(url):
    db = connect(url, inline_runner)
    migrate.upgrade(db.engine)
    return db


def create(db, type_, **params):
    return db.run_sync(db.activities.create_thd,
                       NewActivity(kind="server", type=type_, parameters=params, creator="t"), now()).id


def publish(db, ids, queue_url):
    """What the server's publisher does: put the ids on the queue, mark them published."""
    from server.queue.publisher import mark_published_thd

    if queue_url == "db":
        from server.queue.dbqueue import DbQueue

        db.run_sync(DbQueue._insert_thd, ids, now())
    else:
        import pika

        from server.queue import DEFAULT_AMQP_QUEUE

        conn = pika.BlockingConnection(pika.URLParameters(queue_url))
        try:
            ch = conn.channel()
            ch.queue_declare(DEFAULT_AMQP_QUEUE, durable=True)
            ch.confirm_delivery()
            for i in ids:
                ch.basic_publish("", DEFAULT_AMQP_QUEUE, str(i).encode(),
                                 pika.BasicProperties(delivery_mode=2), mandatory=True)
        finally:
            conn.close()
    db.run_sync(mark_published_thd, ids, now())


def stop(proc, sig=signal.SIGTERM, timeout=30):
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_killed_mid_job_ends_interrupted_after_the_lease(tmp_path, make_distribution, postgres_url, amqp_url,
                                                         amqp_queue_name):
    root = make_distribution("slow-jobs", SLOW_PLUGIN, {"ridgeline.jobs": {"slow": "slowjobs"}})
    db = setup_db(postgres_url)
    aid = create(db, "slow-job", seconds=600)
    env = {"RIDGELINE_DATABASE_URL": postgres_url, "RIDGELINE_QUEUE_URL": amqp_url, "RIDGELINE_LEASE_SECONDS": "2"}
    # The queue name is the default one; keep this test's broker state apart through its own vhost.
    first = start_handler(root, env, tmp_path, "first")
    publish(db, [aid], amqp_url)
    try:
        wait_for(lambda: db.run_sync(db.activities.get_thd, aid).progress == 10, what="the job to run")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        a = db.run_sync(db.activities.get_thd, aid)
        assert a.state == "in-progress" and a.claimed_by
        holder = a.claimed_by
        second = start_handler(root, env, tmp_path, "second")
        try:
            wait_for(lambda: db.run_sync(db.activities.get_thd, aid).state != "in-progress", what="the lease sweep")
            a = db.run_sync(db.activities.get_thd, aid)
            assert (a.state, a.result_code, a.result_name) == ("failed", codes.INTERRUPTED, "interrupted")
            assert holder in a.result_text
            assert a.completed_at >= a.delivered_at + dt.timedelta(seconds=2)
        finally:
            assert stop(second) == 0
    finally:
        if first.poll() is None:
            first.kill()
        db.close()


def test_sigterm_lets_a_running_job_finish_then_exits(tmp_path, make_distribution, sqlite_url):
    root = make_distribution("slow-jobs", SLOW_PLUGIN, {"ridgeline.jobs": {"slow": "slowjobs"}})
    db = setup_db(sqlite_url)
    aid = create(db, "slow-job", seconds=1.5)
    proc = start_handler(root, {"RIDGELINE_DATABASE_URL": sqlite_url, "RIDGELINE_JOB_GRACE": "20",
                                # One slot, busy: the later activity can only wait for it.
                                "RIDGELINE_JOB_CONCURRENCY": "1"}, tmp_path, "h")
    publish(db, [aid], "db")
    try:
        wait_for(lambda: db.run_sync(db.activities.get_thd, aid).progress == 10, what="the job to run")
        later = create(db, "slow-job", seconds=0)
        publish(db, [later], "db")
        started = time.monotonic()
        assert stop(proc) == 0
        assert time.monotonic() - started < 15
        a = db.run_sync(db.activities.get_thd, aid)
        assert (a.state, a.result_text) == ("succeeded", "slept")
        # Claimed nothing after SIGTERM.
        assert db.run_sync(db.activities.get_thd, later).state == "queued"
    finally:
        if proc.poll() is None:
            proc.kill()
        db.close()


def test_sigterm_with_a_stuck_job_exits_after_the_grace(tmp_path, make_distribution, sqlite_url):
    root = make_distribution("slow-jobs", SLOW_PLUGIN, {"ridgeline.jobs": {"slow": "slowjobs"}})
    db = setup_db(sqlite_url)
    aid = create(db, "slow-job", seconds=600)
    proc = start_handler(root, {"RIDGELINE_DATABASE_URL": sqlite_url, "RIDGELINE_JOB_GRACE": "1"}, tmp_path, "h")
    publish(db, [aid], "db")
    try:
        wait_for(lambda: db.run_sync(db.activities.get_thd, aid).progress == 10, what="the job to run")
        started = time.monotonic()
        assert stop(proc) == 0
        assert time.monotonic() - started < 10
        # Left to the lease rule.
        assert db.run_sync(db.activities.get_thd, aid).state == "in-progress"
    finally:
        if proc.poll() is None:
            proc.kill()
        db.close()


def test_bad_configuration_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ridgeline", "job-handler", "--queue", "redis://x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "queue_url" in done.stderr and "Traceback" not in done.stderr


def test_old_schema_is_refused_with_exit_1(tmp_path, sqlite_url):
    done = subprocess.run([sys.executable, "-m", "ridgeline", "job-handler", "--database", sqlite_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "upgrade" in done.stderr


def test_help_shows_the_job_handler_options():
    done = subprocess.run([sys.executable, "-m", "ridgeline", "job-handler", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for flag in ("--config", "--database", "--queue", "--concurrency", "--lease-seconds", "--job-grace"):
        assert flag in done.stdout, flag
