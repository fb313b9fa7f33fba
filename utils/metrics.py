"""Prometheus metrics: what each process counts, and what the database says at scrape time.

Counted in the process that saw it (every gunicorn worker):
- `lms_http_requests_total{method, endpoint, status}` and the latency histogram
  `lms_http_request_duration_seconds{method, endpoint}`, where `endpoint` is the URL rule
  (`/api/v1/courses/<int:course_id>`), so the label set stays as small as the URL map;
- `lms_database_errors_total{error}`: every error the database driver raised (SQLAlchemy's
  `handle_error` event, for every engine);
- `lms_redis_errors_total{error}`: every Redis command that failed (the app's client, the rate
  limiter's and RQ's alike).

Read when Prometheus scrapes (`DatabaseFigures`), because only the database sees every
settlement, refund and issuance, whichever process made it (a webhook in one worker, the
reconciler in the RQ worker, a bulk issuance job): payments settled / failed / refunded and
their amounts, certificates issued, jobs by state and failed attempts, and the RQ queue's depth.
These figures are the same on every host; a dashboard takes their `max` across instances.

Under gunicorn (gunicorn.conf.py) each worker writes its counts to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode); the master serves their sum,
and the scrape-time figures, on METRICS_ADDRESS:METRICS_PORT, a port the reverse proxy does not
forward. When a worker exits, its files are folded into one archive file per type, so counts
survive worker restarts (max_requests) and the directory does not grow with every restart.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import threading
import time
from decimal import Decimal

import redis
from flask import Flask, g, request
from prometheus_client import (CollectorRegistry, Counter, Histogram, multiprocess,
                               start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from sqlalchemy import case, create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from config import database_engine_options
from models import BackgroundJob, Certificate, Payment

log = logging.getLogger("lms.metrics")

REQUESTS = Counter(
    "lms_http_requests", "HTTP requests answered, by method, URL rule and status",
    ["method", "endpoint", "status"])
LATENCY = Histogram(
    "lms_http_request_duration_seconds",
    "Time from the request reaching the app to its response, by method and URL rule",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
DATABASE_ERRORS = Counter(
    "lms_database_errors", "Errors raised by the database driver, by kind", ["error"])
REDIS_ERRORS = Counter(
    "lms_redis_errors", "Redis commands that failed, by error", ["error"])

# A method label from anything a client sends would let a client grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Redis errors that are control flow, not failures: a script not cached yet (redis-py loads
# it and retries), an optimistic transaction that saw a concurrent write.
_EXPECTED_REDIS_ERRORS = (redis.exceptions.NoScriptError, redis.exceptions.WatchError)


# --- counted in each process ------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Count every request of `app`; count database and Redis errors in this process."""
    # First of the before_request functions, so a request refused by a later one (a blocked
    # address, a rate limit) is timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_count_request)
    instrument_database()
    instrument_redis()


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response):
    method = request.method if request.method in _METHODS else "other"
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    count_request(method, endpoint, response.status_code, g.pop("metrics_started", None))
    return response


def count_request(method: str, endpoint: str, status: int, started: float | None) -> None:
    """Count an answer and its latency (also called by utils/pipeline/catalog_fast_path.py for
    the answers it sends before Flask runs)."""
    REQUESTS.labels(method, endpoint, str(status)).inc()
    if started is not None:
        LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)


def _count_database_error(context) -> None:
    error = context.sqlalchemy_exception or context.original_exception
    DATABASE_ERRORS.labels(type(error).__name__).inc()


def instrument_database() -> None:
    if not event.contains(Engine, "handle_error", _count_database_error):
        event.listen(Engine, "handle_error", _count_database_error)


def _counting_redis_errors(method):
    @functools.wraps(method)
    def counted(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            if not isinstance(exc, _EXPECTED_REDIS_ERRORS):
                REDIS_ERRORS.labels(type(exc).__name__).inc()
            raise

    counted.counts_redis_errors = True
    return counted


def instrument_redis() -> None:
    """Wrap redis-py's two ways a command reaches the server (a command, a pipeline's
    execution), as tracing instrumentations do: every client in the process is counted,
    including those of Flask-Limiter and RQ, without touching the code that uses them."""
    for cls, name in ((redis.Redis, "execute_command"), (redis.client.Pipeline, "execute"),
                      (redis.client.Pipeline, "immediate_execute_command")):
        method = getattr(cls, name)
        if not getattr(method, "counts_redis_errors", False):
            setattr(cls, name, _counting_redis_errors(method))


# --- read at scrape time ------------------------------------------------------------------------

class DatabaseFigures:
    """A Prometheus collector: business figures from the database and the job queue's depth
    from Redis, read when scraped. A source that cannot be read says so in `lms_figures_up`
    and leaves its figures out of that scrape (it never fails the scrape)."""

    def __init__(self, engine, redis_client=None, queue_name: str = "lms"):
        self.engine = engine
        self.redis = redis_client
        self.queue_name = queue_name

    @classmethod
    def from_config(cls, config) -> "DatabaseFigures":
        """Connections of its own (none pooled, so none is shared with a forked worker), with
        the app's connect and statement timeouts."""
        url = config["SQLALCHEMY_DATABASE_URI"]
        options = database_engine_options(url)
        engine = create_engine(url, poolclass=NullPool,
                               connect_args=options.get("connect_args", {}))
        client = None
        if config.get("REDIS_URL"):
            client = redis.Redis.from_url(config["REDIS_URL"], socket_connect_timeout=2,
                                          socket_timeout=2)
        return cls(engine, client, config.get("JOBS_QUEUE", "lms"))

    def describe(self):
        return []  # collected only when scraped, never at registration

    def collect(self):
        up = GaugeMetricFamily("lms_figures_up", "1 when the source of the scrape-time "
                               "figures could be read, else 0", labels=["source"])
        try:
            families = list(self._database_figures())
        except Exception as exc:  # any driver error: the figures are left out, not the scrape
            log.warning("metrics: database figures not read: %s", type(exc).__name__)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield from families
        if self.redis is not None:
            try:
                families = list(self._queue_figures())
            except redis.RedisError as exc:
                log.warning("metrics: job queue not read: %s", type(exc).__name__)
                up.add_metric(["redis"], 0)
            else:
                up.add_metric(["redis"], 1)
                yield from families
        yield up

    def _database_figures(self):
        payments, certificates, jobs = (Payment.__table__, Certificate.__table__,
                                        BackgroundJob.__table__)
        with self.engine.connect() as conn:
            payment_rows = conn.execute(
                select(payments.c.gateway, payments.c.currency, payments.c.status,
                       func.count(), func.count(payments.c.paid_at),
                       func.count(payments.c.refunded_at),
                       func.sum(case((payments.c.paid_at.is_not(None), payments.c.amount),
                                     else_=0)),
                       func.sum(payments.c.refunded_amount))
                .group_by(payments.c.gateway, payments.c.currency, payments.c.status)).all()
            certificate_rows = conn.execute(
                select(certificates.c.status, func.count()).group_by(certificates.c.status)
            ).all()
            job_rows = conn.execute(
                select(jobs.c.kind, jobs.c.status, func.count(), func.sum(jobs.c.attempts))
                .group_by(jobs.c.kind, jobs.c.status)).all()

        by_status = GaugeMetricFamily("lms_payments", "Payments by gateway and current status",
                                      labels=["gateway", "status"])
        settled = CounterMetricFamily(
            "lms_payments_settled", "Payments ever settled (a settlement time is recorded)",
            labels=["gateway"])
        failed = CounterMetricFamily("lms_payments_failed", "Payments that failed",
                                     labels=["gateway"])
        refunded = CounterMetricFamily(
            "lms_payments_refunded", "Payments refunded (in full or in part)",
            labels=["gateway"])
        settled_amount = CounterMetricFamily(
            "lms_payments_settled_amount", "Sum of settled payments, in major units",
            labels=["currency"])
        refunded_amount = CounterMetricFamily(
            "lms_payments_refunded_amount", "Sum refunded, in major units", labels=["currency"])
        counts: dict[tuple, int] = {}
        per_gateway = {}
        amounts: dict[str, list[Decimal]] = {}
        for gateway, currency, status, count, paid, refunds, paid_sum, refund_sum in payment_rows:
            counts[(gateway, status)] = counts.get((gateway, status), 0) + count
            totals = per_gateway.setdefault(gateway, [0, 0, 0])
            totals[0] += paid
            totals[1] += count if status == "failed" else 0
            totals[2] += refunds
            money = amounts.setdefault(currency, [Decimal(0), Decimal(0)])
            money[0] += Decimal(paid_sum or 0)
            money[1] += Decimal(refund_sum or 0)
        for (gateway, status), count in sorted(counts.items()):
            by_status.add_metric([gateway, status], count)
        for gateway, (paid, failures, refunds) in sorted(per_gateway.items()):
            settled.add_metric([gateway], paid)
            failed.add_metric([gateway], failures)
            refunded.add_metric([gateway], refunds)
        for currency, (paid_sum, refund_sum) in sorted(amounts.items()):
            settled_amount.add_metric([currency], float(paid_sum))
            refunded_amount.add_metric([currency], float(refund_sum))
        yield from (by_status, settled, failed, refunded, settled_amount, refunded_amount)

        issued = CounterMetricFamily("lms_certificates_issued",
                                     "Certificates issued (revoked ones included)")
        current = GaugeMetricFamily("lms_certificates", "Certificates by current status",
                                    labels=["status"])
        issued.add_metric([], sum(count for _, count in certificate_rows))
        for status, count in sorted(certificate_rows):
            current.add_metric([status], count)
        yield from (issued, current)

        by_state = GaugeMetricFamily("lms_jobs", "Background jobs by kind and state "
                                     "(failed: waiting for an admin's retry)",
                                     labels=["kind", "status"])
        failed_attempts = CounterMetricFamily(
            "lms_job_failed_attempts", "Job attempts that failed (each retry counts)",
            labels=["kind"])
        failures: dict[str, int] = {}
        for kind, status, count, attempts in sorted(job_rows):
            by_state.add_metric([kind, status], count)
            # Every attempt failed, except the one that finished and the one under way.
            ended_well = count if status in ("finished", "started") else 0
            failures[kind] = failures.get(kind, 0) + int(attempts or 0) - ended_well
        for kind, count in sorted(failures.items()):
            failed_attempts.add_metric([kind], max(count, 0))
        yield from (by_state, failed_attempts)

    def _queue_figures(self):
        # rq only where the queue is read: the web process does not otherwise load it.
        from rq import Queue
        from rq.registry import ScheduledJobRegistry

        queue = Queue(self.queue_name, connection=self.redis)
        scheduled_key = ScheduledJobRegistry(queue=queue).key
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue.key)
            pipe.zcard(scheduled_key)
            waiting, scheduled = pipe.execute()
        depth = GaugeMetricFamily("lms_job_queue_depth", "Jobs waiting in the RQ queue",
                                  labels=["queue"])
        depth.add_metric([self.queue_name], waiting)
        later = GaugeMetricFamily("lms_job_queue_scheduled",
                                  "Jobs scheduled for later in the RQ queue (retries waiting "
                                  "for their interval, the worker's next tick)",
                                  labels=["queue"])
        later.add_metric([self.queue_name], scheduled)
        yield from (depth, later)


# --- the gunicorn master (gunicorn.conf.py) -----------------------------------------------------

# A worker's files are folded into the archive while the master's metrics thread may be
# reading the directory: both hold this lock.
_directory_lock = threading.Lock()


class _Locked:
    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        with _directory_lock:
            return list(self.collector.collect())


def clear_directory(path: str) -> None:
    """Remove the files of a previous run (prometheus_client requires an empty directory at
    start, or the old counts are served as if they were this run's)."""
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def worker_exited(pid: int, path: str) -> None:
    """Fold an exited worker's counters and histograms into one archive file per type, then
    remove its files: its counts stay in the sums, and a server whose workers are recycled
    (max_requests) keeps a handful of files instead of two per worker ever started."""
    with _directory_lock:
        multiprocess.mark_process_dead(pid, path)
        for kind in ("counter", "histogram"):
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(path, f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
            os.remove(dead)


_server = None


def serve(config, address: str, port: int):
    """Serve the workers' summed counts and the scrape-time figures on address:port (a thread
    of the gunicorn master). Returns the HTTP server."""
    global _server
    registry = CollectorRegistry()
    registry.register(_Locked(multiprocess.MultiProcessCollector(None)))
    registry.register(DatabaseFigures.from_config(config))
    _server, _thread = start_http_server(port, addr=address, registry=registry)
    return _server


def close_in_worker() -> None:
    """In a forked worker: close the copy of the master's metrics socket."""
    if _server is not None:
        _server.socket.close()
