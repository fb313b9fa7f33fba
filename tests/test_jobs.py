"""Background jobs: the 202 answers and their job, who may read a job, the admins' list of
failed jobs and their retry, and the jobs running on a real RQ worker.

The worker tests run `flask worker --burst` in a subprocess with the production configuration,
on PostgreSQL and Redis (a queue name of their own), sending mail to a local SMTP server; they
skip without PostgreSQL or Redis, except under CI=true. The rest run on any database, with jobs
inline as in the embedded default.
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis
from flask_jwt_extended import create_access_token
from rq import Queue
from sqlalchemy import select, update

from app import create_app
from models import BackgroundJob, Notification, User, db
from services import jobs
from tests.conftest import redis_url, require_service
from tests.support.assertions import error, ok
from tests.support.gunicorn_server import base_env, run_flask
from tests.support.signing import signing_settings
from tests.support.standins import free_port, smtp_server
from utils.helpers import utcnow

API = "/api/v1"


@dataclass(frozen=True)
class Actor:
    id: int
    email: str
    headers: dict


def person(app, role: str = "student", **fields) -> Actor:
    with app.app_context():
        values = {"email": f"{role}-{uuid.uuid4().hex[:10]}@example.com",
                  "first_name": role.title(), "last_name": "Jobs", "role": role,
                  "is_active": True, "is_email_verified": True, **fields}
        user = User(**values)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        return Actor(user.id, user.email,
                     {"Authorization": f"Bearer {create_access_token(user)}"})


def job_row(app, job_id: str) -> BackgroundJob:
    with app.app_context():
        row = db.session.get(BackgroundJob, job_id)
        db.session.expunge(row)
        return row


def add_job(app, **fields) -> str:
    values = {"id": str(uuid.uuid4()), "kind": "payments.reconcile", "status": "failed",
              "args": {}, "attempts": 4, "created_at": utcnow(), **fields}
    with app.app_context():
        db.session.add(BackgroundJob(**values))
        db.session.commit()
    return values["id"]


# --- inline (the embedded default) ------------------------------------------------------------

def test_reconcile_answers_202_with_the_finished_job_and_its_url(app, client, make_user,
                                                                 auth_headers):
    admin = make_user("admin")
    response = client.post(f"{API}/admin/payments/reconcile", json={},
                           headers=auth_headers(admin))
    body = ok(response, 202)
    job = body["job"]
    assert (job["kind"], job["status"], job["attempts"], job["created_by"]) == (
        "payments.reconcile", "finished", 1, admin)
    assert job["result"] == {"outcomes": {}} and job["error"] is None
    assert response.headers["Location"] == f"{API}/jobs/{job['id']}"
    assert ok(client.get(response.headers["Location"], headers=auth_headers(admin)))["job"] == job
    row = job_row(app, job["id"])
    assert row.status == "finished" and row.finished_at is not None


def test_a_job_is_its_starters_and_the_admins_only(app, client, make_user, auth_headers):
    starter, other, admin = make_user(), make_user(), make_user("admin")
    job_id = add_job(app, status="finished", created_by=starter)
    assert ok(client.get(f"{API}/jobs/{job_id}", headers=auth_headers(starter)))["job"][
        "id"] == job_id
    assert ok(client.get(f"{API}/jobs/{job_id}", headers=auth_headers(admin)))["job"][
        "created_by"] == starter
    error(client.get(f"{API}/jobs/{job_id}", headers=auth_headers(other)), 404)
    error(client.get(f"{API}/jobs/{job_id}"), 401)
    error(client.get(f"{API}/jobs/{'x' * 5000}", headers=auth_headers(admin)), 404)


def test_failed_jobs_are_listed_newest_first_and_can_be_retried_once(app, client, make_user,
                                                                    auth_headers):
    admin, student = make_user("admin"), make_user()
    older = add_job(app, error="gateway down", created_at=utcnow() - timedelta(hours=1))
    newer = add_job(app, error="gateway down again")
    add_job(app, status="finished")
    add_job(app, status="retrying")

    body = ok(client.get(f"{API}/admin/jobs/failed?per_page=1", headers=auth_headers(admin)))
    assert [j["id"] for j in body["jobs"]] == [newer]
    assert body["pagination"]["total"] == 2
    body = ok(client.get(f"{API}/admin/jobs/failed?page=2&per_page=1",
                         headers=auth_headers(admin)))
    assert [j["id"] for j in body["jobs"]] == [older]
    assert body["jobs"][0]["error"] == "gateway down"
    error(client.get(f"{API}/admin/jobs/failed", headers=auth_headers(student)), 403)
    error(client.post(f"{API}/admin/jobs/{older}/retry", headers=auth_headers(student)), 403)

    retried = ok(client.post(f"{API}/admin/jobs/{older}/retry", headers=auth_headers(admin)),
                 202)["job"]
    assert (retried["status"], retried["attempts"], retried["error"]) == ("finished", 5, None)
    assert [j["id"] for j in ok(client.get(f"{API}/admin/jobs/failed",
                                           headers=auth_headers(admin)))["jobs"]] == [newer]
    # Only a failed job can be retried.
    error(client.post(f"{API}/admin/jobs/{older}/retry", headers=auth_headers(admin)), 409)
    error(client.post(f"{API}/admin/jobs/{uuid.uuid4()}/retry", headers=auth_headers(admin)),
          404)


def test_a_job_that_fails_inline_is_recorded_failed_and_the_request_still_answers(
        app, client, make_user, auth_headers):
    admin = make_user("admin")
    response = client.post(f"{API}/certificates/bulk-generate/999999",
                           headers=auth_headers(admin))
    error(response, 404)  # checked before any job is started
    with app.app_context():
        assert db.session.scalar(select(BackgroundJob.id)) is None
        job = jobs.start("certificates.bulk_issue", {"course_id": 999999})
        db.session.commit()
        row = jobs.launch(job)
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.error == "Course not found" and row.finished_at is not None


def test_a_finished_job_is_not_run_twice(app):
    job_id = add_job(app, status="finished", attempts=1)
    with app.app_context():
        assert jobs.perform(job_id) is None
        assert db.session.get(BackgroundJob, job_id).attempts == 1


# --- a real RQ worker ---------------------------------------------------------------------------

@dataclass
class RQWorld:
    app: object
    client: object
    queue_name: str
    redis_url: str
    database_url: str
    upload_folder: str

    def worker(self, mail_port: int, *extra: str):
        """`flask worker --burst` as production runs it, in a subprocess."""
        env = base_env(
            APP_ENV="production", DATABASE_URL=self.database_url, REDIS_URL=self.redis_url,
            RATE_LIMIT_STORAGE_URL=self.redis_url, JOBS_BACKEND="rq",
            JOBS_QUEUE=self.queue_name, JOB_RETRY_INTERVALS="1", JOBS_TICK_SECONDS="0",
            MAIL_BACKEND="smtp", MAIL_SERVER="127.0.0.1", MAIL_PORT=str(mail_port),
            MAIL_USE_TLS="False", SESSION_SECRET=secrets.token_hex(16),
            JWT_SECRET_KEY=secrets.token_hex(32), UPLOAD_FOLDER=self.upload_folder,
            PUBLIC_BASE_URL="https://lms.example.test",
            LOG_FORMAT="json", LOG_LEVEL="INFO", **signing_settings())
        return run_flask(env, "worker", "--burst", *extra, timeout=60)

    def queued(self) -> int:
        return Queue(self.queue_name, connection=redis.Redis.from_url(self.redis_url)).count

    def scheduled(self) -> list[str]:
        return Queue(self.queue_name, connection=redis.Redis.from_url(
            self.redis_url)).scheduled_job_registry.get_job_ids()


@pytest.fixture
def rq_world(postgres_app):
    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    database_url = postgres_app.config["SQLALCHEMY_DATABASE_URI"]
    queue_name = f"lms-test-{uuid.uuid4().hex[:8]}"
    rq_app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": url, "JOBS_BACKEND": "rq",
        "JOBS_QUEUE": queue_name, "JOB_RETRY_INTERVALS": [1], "JOBS_TICK_SECONDS": 0,
        "UPLOAD_FOLDER": postgres_app.config["UPLOAD_FOLDER"]})
    world = RQWorld(rq_app, rq_app.test_client(), queue_name, url, database_url,
                    postgres_app.config["UPLOAD_FOLDER"])
    yield world
    with rq_app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())
        db.engine.dispose()
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"rq:*{queue_name}*"):
        client.delete(key)


def test_an_email_broadcast_is_queued_then_sent_by_the_worker(rq_world):
    w = rq_world
    admin = person(w.app, "admin")
    students = [person(w.app, first_name=f"Learner{n}") for n in range(3)]
    sink = smtp_server()
    try:
        response = w.client.post(f"{API}/notifications/broadcast", headers=admin.headers,
                                 json={"title": "Term starts", "message": "See you on Monday",
                                       "send_email": True})
        body = ok(response, 202)
        job = body["job"]
        assert body["recipients"] == 4
        assert (job["kind"], job["status"], job["attempts"]) == (
            "notifications.email", "queued", 0)
        assert w.queued() == 1 and sink.messages == []
        # The queue holds the job's id only: no address and no text goes to Redis.
        keys = redis.Redis.from_url(w.redis_url)
        for key in keys.scan_iter(f"rq:job:{job['id']}*"):
            if keys.type(key) == b"hash":
                assert b"See you on Monday" not in b"".join(
                    v for v in keys.hgetall(key).values())
        # In-app notifications exist before any e-mail is sent.
        with w.app.app_context():
            assert db.session.scalar(select(db.func.count(Notification.id))) == 4

        w.worker(sink.port)

        done = ok(w.client.get(response.headers["Location"], headers=admin.headers))["job"]
        assert (done["status"], done["attempts"], done["error"]) == ("finished", 1, None)
        assert done["result"] == {"sent": 4, "recipients": 4}
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(
            [admin.email] + [s.email for s in students])
        assert w.queued() == 0
    finally:
        sink.stop()


def test_a_mail_server_down_is_retried_with_backoff_then_failed_then_retried_by_an_admin(
        rq_world):
    w = rq_world
    admin = person(w.app, "admin")
    students = [person(w.app) for _ in range(2)]
    response = w.client.post(f"{API}/notifications/send", headers=admin.headers, json={
        "user_ids": [s.id for s in students], "title": "Grades", "message": "Posted",
        "send_email": True})
    job_id = ok(response, 202)["job"]["id"]
    down = free_port()  # nothing listens there: the mail server is down

    w.worker(down)
    row = job_row(w.app, job_id)
    assert (row.status, row.attempts) == ("retrying", 1), row.error
    assert "could not be sent" in row.error
    # The retry waits for its interval (1 s here) in RQ's schedule, not in the queue.
    assert w.queued() == 0 and w.scheduled() == [job_id]
    time.sleep(1.2)
    w.worker(down)  # the one retry configured here fails as well
    row = job_row(w.app, job_id)
    assert (row.status, row.attempts) == ("failed", 2) and row.finished_at is not None

    # The in-app notifications stand; admins see the failure and retry once mail is back.
    with w.app.app_context():
        assert db.session.scalar(select(db.func.count(Notification.id))) == 2
    listed = ok(w.client.get(f"{API}/admin/jobs/failed", headers=admin.headers))["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    sink = smtp_server()
    try:
        again = ok(w.client.post(f"{API}/admin/jobs/{job_id}/retry", headers=admin.headers),
                   202)["job"]
        assert again["status"] == "queued" and w.queued() == 1
        w.worker(sink.port)
        row = job_row(w.app, job_id)
        assert (row.status, row.attempts, row.error) == ("finished", 3, None)
        assert row.result == {"sent": 2, "recipients": 2}
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(s.email for s in students)
    finally:
        sink.stop()


def test_mail_caused_by_a_change_is_queued_only_if_the_change_commits(rq_world):
    """notify(email=True) from any service (live sessions, contact forms, receipts) starts its
    e-mail job inside the caller's transaction: a rollback leaves no job and queues nothing."""
    from services import notification_service

    w = rq_world
    student = person(w.app)
    sink = smtp_server()
    try:
        with w.app.app_context():
            audience = notification_service.recipients_query(user_ids=[student.id])
            notification_service.notify(audience, kind="course_update", title="New lesson",
                                        message="Lesson 2 is out", email=True)
            db.session.rollback()
            assert db.session.scalar(select(BackgroundJob.id)) is None
            assert w.queued() == 0

            notification_service.notify(audience, kind="course_update", title="New lesson",
                                        message="Lesson 2 is out", email=True)
            db.session.commit()
            row = db.session.scalar(select(BackgroundJob))
            assert (row.kind, row.status, row.args["user_ids"]) == (
                "notifications.email", "queued", [student.id])
            job_id = row.id
        assert w.queued() == 1 and sink.messages == []
        w.worker(sink.port)
        assert [m.rcpt_tos for m in sink.messages] == [[student.email]]
        assert sink.messages[0].message["Subject"].startswith("New lesson")
        assert job_row(w.app, job_id).status == "finished"
    finally:
        sink.stop()


def test_a_job_committed_while_redis_is_down_is_queued_later_by_the_tick(rq_world):
    w = rq_world
    admin = person(w.app, "admin")
    w.app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        response = w.client.post(f"{API}/admin/payments/reconcile", json={},
                                 headers=admin.headers)
    finally:
        w.app.config["REDIS_URL"] = w.redis_url
    job_id = ok(response, 202)["job"]["id"]
    assert job_row(w.app, job_id).status == "queued" and w.queued() == 0

    with w.app.app_context():
        assert jobs.requeue_stale() == 0  # too recent to be called lost
        db.session.execute(update(BackgroundJob).where(BackgroundJob.id == job_id).values(
            created_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()
        assert jobs.requeue_stale() == 1
        assert jobs.requeue_stale() == 0  # already in the queue: not queued twice
    assert w.queued() == 1
    w.worker(free_port())
    row = job_row(w.app, job_id)
    assert (row.status, row.result) == ("finished", {"outcomes": {}})


def test_a_retry_that_redis_lost_is_queued_again_by_the_tick(rq_world):
    """Redis restarted while a job waited for its retry: the row says "retrying" and no queue
    or schedule holds it. The tick queues it once the longest retry interval has passed."""
    w = rq_world
    job_id = add_job(w.app, status="retrying", attempts=1, error="SMTP down",
                     started_at=utcnow() - timedelta(seconds=30))
    with w.app.app_context():
        assert jobs.requeue_stale() == 0  # its retry may still be due: left alone
        db.session.execute(update(BackgroundJob).where(BackgroundJob.id == job_id).values(
            started_at=utcnow() - timedelta(minutes=10)))
        db.session.commit()
        assert jobs.requeue_stale() == 1
    assert w.queued() == 1
    w.worker(free_port())
    row = job_row(w.app, job_id)
    assert (row.status, row.attempts, row.result) == ("finished", 2, {"outcomes": {}})


def test_a_released_savepoint_is_not_a_commit(app, caplog):
    """SQLAlchemy runs after_commit hooks when a savepoint is released too: mail and jobs wait
    for the real commit, and a rollback after the savepoint sends and starts nothing."""
    from services.email_service import Outgoing, send_after_commit

    with app.app_context():
        with caplog.at_level("WARNING", logger="lms.email"):
            send_after_commit(Outgoing(to="someone@example.com", subject="Not yet", text="x"))
            job = jobs.start("payments.reconcile", {})
            with db.session.begin_nested():
                pass
            assert "Not yet" not in caplog.text
            assert db.session.info.get("jobs") == [job.id]
            db.session.rollback()
        assert "Not yet" not in caplog.text
        assert db.session.scalar(select(BackgroundJob.id)) is None
        assert "jobs" not in db.session.info and "outbox" not in db.session.info
