"""Background jobs: a durable row in `jobs` for every operation, run by RQ or inline.

- `start(kind, args, user_id)` adds the row to the caller's transaction; once that commits,
  `launch(job)` hands the id to RQ (JOBS_BACKEND="rq", served by `flask worker`) or runs it at
  once (JOBS_BACKEND="inline", the embedded default). The queue carries only the id: arguments,
  results and errors stay in the database, never in Redis or the worker's log.
- `perform(job_id)` is what the worker calls: it marks the row started, runs the kind's
  function, and records the result. A failure is retried by RQ with backoff
  (JOB_RETRY_INTERVALS); the row says "retrying" until the last attempt fails, then "failed",
  which admins list at GET /admin/jobs/failed and can retry.
- Mail caused by a change is queued the same way when RQ is on: `email_service.send_after_commit`
  adds an "email.send" row to the change's own transaction (a transactional outbox), so a
  rollback sends nothing and a committed change always has its mail on record.
- The worker's periodic `tick` runs its registered tasks (reconciling stale payments) and
  re-queues rows that were committed while Redis was unreachable.

What each kind runs is named in services/job_kinds.py, which the app factory registers: this
module knows the queue, not the domains.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any, Callable

import redis
from flask import current_app
from sqlalchemy import and_, event, or_, select, update
from sqlalchemy.orm import Session

from models import BackgroundJob, db
from utils.errors import APIError, Conflict, NotFound
from utils.helpers import utcnow
from utils.pipeline import redis_client

log = logging.getLogger("lms.jobs")

TICK_KEY = "lms:jobs:tick"
STALE_AFTER = timedelta(minutes=2)  # a queued row older than this was lost by Redis
_handlers: dict[str, Callable[[dict], dict | None]] = {}
_tick_tasks: dict[str, Callable[[], Any]] = {}


def register_kinds(kinds: dict[str, Callable[[dict], dict | None]],
                   tick_tasks: dict[str, Callable[[], Any]]) -> None:
    """Name the function that runs each kind of job (f(args) -> result dict or None), and the
    tasks of the worker's periodic tick (f() -> what the tick reports under that name)."""
    _handlers.update(kinds)
    _tick_tasks.update(tick_tasks)


def queued_mode() -> bool:
    return current_app.config.get("JOBS_BACKEND") == "rq" and bool(current_app.config.get(
        "REDIS_URL"))


# --- starting ----------------------------------------------------------------------------------

def start(kind: str, args: dict, user_id: int | None = None) -> BackgroundJob:
    """Add the job's row to the current transaction; `launch` it after the commit."""
    if kind not in _handlers:
        raise ValueError(f"unknown job kind {kind!r}")
    job = BackgroundJob(id=str(uuid.uuid4()), kind=kind, status="queued", args=args,
                        created_by=user_id, attempts=0, created_at=utcnow())
    db.session.add(job)
    _enqueue_on_commit(job)
    return job


def _enqueue_on_commit(job: BackgroundJob) -> None:
    """Hand the row to RQ when the current transaction commits (`_enqueue_committed`)."""
    db.session.info.setdefault("jobs", []).append(job.id)


def launch(job: BackgroundJob) -> BackgroundJob:
    """After the commit that started it: run the job now when jobs run inline (RQ got it at
    the commit otherwise). Returns the row as it stands."""
    if not queued_mode():
        perform(job.id)
    db.session.expire_all()
    return db.session.get(BackgroundJob, job.id)


def _enqueue_committed(session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the real commit is to come
        return
    ids = session.info.pop("jobs", [])
    if ids and queued_mode():
        enqueue(ids)


def _drop_uncommitted(session, previous_transaction) -> None:
    if not session.in_transaction():
        session.info.pop("jobs", None)


def register() -> None:
    """Hand jobs to RQ when the transaction that started them commits (app factory)."""
    if not event.contains(Session, "after_commit", _enqueue_committed):
        event.listen(Session, "after_commit", _enqueue_committed)
        event.listen(Session, "after_soft_rollback", _drop_uncommitted)


def progress(job_id: str) -> dict | None:
    return db.session.scalar(select(BackgroundJob.result).where(BackgroundJob.id == job_id))


def save_progress(job_id: str, result: dict) -> None:
    db.session.execute(update(BackgroundJob).where(BackgroundJob.id == job_id)
                       .values(result=result))
    db.session.commit()


def queue(connection=None):
    from rq import Queue  # RQ (~55 ms to import) only where jobs go to Redis

    return Queue(current_app.config["JOBS_QUEUE"], connection=connection or redis_client.get())


def enqueue(job_ids: list[str]) -> bool:
    """Hand ids to RQ. When Redis is unreachable the rows stay queued and the worker's tick
    re-queues them; the request that started them is not failed for it."""
    from rq import Retry  # RQ (~55 ms to import) only where jobs go to Redis

    if not job_ids:
        return True
    cfg = current_app.config
    intervals = cfg["JOB_RETRY_INTERVALS"]
    try:
        rq_queue = queue()
        with rq_queue.connection.pipeline() as pipe:
            for job_id in job_ids:
                rq_queue.enqueue_call("services.jobs.perform", args=(job_id,), job_id=job_id,
                                      timeout=cfg["JOB_TIMEOUT"], result_ttl=0,
                                      description=f"job {job_id}",
                                      retry=Retry(max=len(intervals), interval=intervals),
                                      pipeline=pipe)
            pipe.execute()
        return True
    except redis.RedisError as exc:
        log.warning("could not queue %d job(s), the worker's tick will: %s", len(job_ids), exc)
        return False


# --- running -------------------------------------------------------------------------------------

def _retries_left() -> int:
    from rq import get_current_job  # RQ (~55 ms to import) only in its worker

    current = get_current_job()
    return (current.retries_left or 0) if current is not None else 0


# What a finished job keeps of its arguments, where they hold more than the record needs: a
# sent mail may hold a link with a token (keep only the facts), a reset request holds the
# e-mail a stranger typed (keep nothing: whether it named an account is the job's result).
_KEPT_ARGS = {
    "email.send": lambda args: {"to": args.get("to"), "subject": args.get("subject")},
    "auth.password_reset": lambda args: {},
}


def perform(job_id: str) -> dict | None:
    """Run one job (the RQ entry point). Raises on failure so that RQ retries it."""
    # A row left "started" by a worker killed at JOB_TIMEOUT may be claimed by the retry.
    abandoned = utcnow() - timedelta(seconds=current_app.config["JOB_TIMEOUT"])
    claimed = db.session.execute(
        update(BackgroundJob).where(BackgroundJob.id == job_id, or_(
            BackgroundJob.status.in_(("queued", "retrying")),
            and_(BackgroundJob.status == "started", BackgroundJob.started_at < abandoned)))
        .values(status="started", started_at=utcnow(), attempts=BackgroundJob.attempts + 1)
        .returning(BackgroundJob.kind, BackgroundJob.args)).first()
    db.session.commit()
    if claimed is None:  # finished already, failed for good, or gone: nothing to do
        log.info("job %s: not runnable, skipped", job_id)
        return None
    kind, args = claimed
    try:
        result = _handlers[kind]({**(args or {}), "_job": job_id})
    except Exception as exc:
        db.session.rollback()
        retrying = _retries_left() > 0
        # Our own errors carry a message meant for people; anything else (a driver's error
        # quotes SQL and parameters) is recorded by its class alone.
        message = exc.message if isinstance(exc, APIError) else (
            f"{type(exc).__name__} (details in the worker's log)")
        log.error("job %s (%s) failed%s: %s", job_id, kind, ", will retry" if retrying else "",
                  message, exc_info=not isinstance(exc, APIError))
        db.session.execute(update(BackgroundJob).where(BackgroundJob.id == job_id).values(
            status="retrying" if retrying else "failed", error=message[:2000],
            finished_at=None if retrying else utcnow()))
        db.session.commit()
        if queued_mode():
            raise
        return None
    values: dict[str, Any] = {"status": "finished", "result": result, "error": None,
                              "finished_at": utcnow()}
    kept = _KEPT_ARGS.get(kind)
    if kept is not None:
        values["args"] = kept(args or {})
    db.session.execute(update(BackgroundJob).where(BackgroundJob.id == job_id).values(**values))
    db.session.commit()
    return result


# --- reading -------------------------------------------------------------------------------------

def visible(job_id: str, user) -> BackgroundJob:
    """The job, to the user who started it and to admins; 404 to everyone else."""
    job = db.session.get(BackgroundJob, job_id[:36])
    if job is None or (user.role != "admin" and job.created_by != user.id):
        raise NotFound("Job not found")
    return job


def failed_query():
    return (select(BackgroundJob).where(BackgroundJob.status == "failed")
            .order_by(BackgroundJob.created_at.desc(), BackgroundJob.id.desc()))


def retry(job: BackgroundJob) -> BackgroundJob:
    """Put a failed job back in the queue (admins); `launch` it after the commit."""
    if job.status != "failed":
        raise Conflict("Only a failed job can be retried")
    job.status = "queued"
    job.error = None
    job.finished_at = None
    _enqueue_on_commit(job)
    return job


# --- the worker's periodic tick --------------------------------------------------------------------

def requeue_stale() -> int:
    """Queue again the rows Redis does not hold: committed while it was unreachable, or
    waiting for a retry that a Redis restart lost."""
    now = utcnow()
    retry_due = now - STALE_AFTER - timedelta(
        seconds=max(current_app.config["JOB_RETRY_INTERVALS"] or [0]))
    ids = list(db.session.scalars(select(BackgroundJob.id).where(or_(
        and_(BackgroundJob.status == "queued", BackgroundJob.created_at < now - STALE_AFTER),
        and_(BackgroundJob.status == "retrying", BackgroundJob.started_at < retry_due)))
        .order_by(BackgroundJob.created_at).limit(10_000)))
    if ids:
        rq_queue = queue()
        known = set(rq_queue.get_job_ids()) | set(
            rq_queue.scheduled_job_registry.get_job_ids())
        ids = [job_id for job_id in ids if job_id not in known]
        enqueue(ids)
    return len(ids)


def schedule_tick(connection, delay: int | None = None) -> bool:
    """Schedule the next tick unless one is scheduled already (one chain per Redis)."""
    seconds = current_app.config["JOBS_TICK_SECONDS"]
    if seconds <= 0:
        return False
    if not connection.set(TICK_KEY, "1", nx=True, ex=seconds + 60):
        return False
    rq_queue = queue(connection)
    if delay == 0:
        rq_queue.enqueue_call("services.jobs.tick", result_ttl=0, description="periodic tick")
    else:
        rq_queue.enqueue_in(timedelta(seconds=delay or seconds), "services.jobs.tick",
                            result_ttl=0, description="periodic tick")
    return True


def tick() -> dict:
    connection = queue().connection
    connection.delete(TICK_KEY)
    try:
        outcomes = {name: task() for name, task in _tick_tasks.items()}
        requeued = requeue_stale()
    finally:
        schedule_tick(connection)
    log.info("tick: %s, requeued %d",
             ", ".join(f"{name} {value}" for name, value in outcomes.items()), requeued)
    return {**outcomes, "requeued": requeued}
