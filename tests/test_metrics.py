"""Metrics (utils/metrics.py), in the test process: requests counted by URL rule, method and
status with their latency; database and Redis errors counted where they happen; the scrape-time
figures read from the database and the job queue; an exited worker's counts kept when its files
are folded into the archive; the Grafana dashboard reading only what is exported.
tests/test_metrics_gunicorn.py scrapes a real multi-worker server.

Counters are global to the process, so each test compares a value before and after."""
from __future__ import annotations

import os
import re
import uuid

import pytest
import redis
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import create_engine

from models import db
from tests.conftest import redis_url, require_service
from tests.support.figures import EXPECTED, samples, seed_figures
from utils import metrics

API = "/api/v1"


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- requests -------------------------------------------------------------------------------------

def test_requests_are_counted_by_url_rule_method_and_status(client):
    health = {"method": "GET", "endpoint": "/api/v1/health", "status": "200"}
    course = {"method": "GET", "endpoint": "/api/v1/courses/<int:course_id>", "status": "404"}
    unmatched = {"method": "GET", "endpoint": "unmatched", "status": "404"}
    before = {
        "health": value("lms_http_requests_total", **health),
        "course": value("lms_http_requests_total", **course),
        "unmatched": value("lms_http_requests_total", **unmatched),
        "timed": value("lms_http_request_duration_seconds_count", method="GET",
                       endpoint="/api/v1/health"),
        "slow": value("lms_http_request_duration_seconds_bucket", method="GET",
                      endpoint="/api/v1/health", le="+Inf"),
    }

    for _ in range(3):
        assert client.get(f"{API}/health").status_code == 200
    # Two different ids, one rule: the label is the rule, so ids cannot grow the label set.
    assert client.get(f"{API}/courses/987654").status_code == 404
    assert client.get(f"{API}/courses/987655").status_code == 404
    assert client.get(f"{API}/no-such-thing/{uuid.uuid4().hex}").status_code == 404

    assert value("lms_http_requests_total", **health) == before["health"] + 3
    assert value("lms_http_requests_total", **course) == before["course"] + 2
    assert value("lms_http_requests_total", **unmatched) == before["unmatched"] + 1
    assert value("lms_http_request_duration_seconds_count", method="GET",
                 endpoint="/api/v1/health") == before["timed"] + 3
    assert value("lms_http_request_duration_seconds_bucket", method="GET",
                 endpoint="/api/v1/health", le="+Inf") == before["slow"] + 3
    assert value("lms_http_request_duration_seconds_sum", method="GET",
                 endpoint="/api/v1/health") > 0


def test_a_method_the_client_made_up_is_counted_as_other(client):
    # A method no rule allows matches no rule either.
    labels = {"method": "other", "endpoint": "unmatched", "status": "405"}
    before = value("lms_http_requests_total", **labels)

    response = client.open(f"{API}/health", method="BREW")

    assert response.status_code == 405
    assert value("lms_http_requests_total", **labels) == before + 1
    assert value("lms_http_requests_total", method="BREW", endpoint="unmatched",
                 status="405") == 0


def test_a_request_refused_before_the_view_is_counted_and_timed(app, client):
    """A blocked address is refused by a before_request function; the timer starts first."""
    from utils.pipeline.blocked_ips import block_ip

    with app.app_context():
        block_ip("198.51.100.77", seconds=60, reason="metrics test")
    labels = {"method": "GET", "endpoint": "/api/v1/public/categories", "status": "403"}
    before = value("lms_http_requests_total", **labels)
    timed = value("lms_http_request_duration_seconds_count", method="GET",
                  endpoint="/api/v1/public/categories")

    response = client.get(f"{API}/public/categories", environ_base={"REMOTE_ADDR": "198.51.100.77"})

    assert response.status_code == 403
    assert response.get_json()["code"] == "ip_blocked"
    assert value("lms_http_requests_total", **labels) == before + 1
    assert value("lms_http_request_duration_seconds_count", method="GET",
                 endpoint="/api/v1/public/categories") == timed + 1


def test_a_view_that_fails_is_counted_as_a_500(client):
    labels = {"method": "POST", "endpoint": "/api/v1/_probe/boom", "status": "500"}
    before = value("lms_http_requests_total", **labels)

    assert client.post(f"{API}/_probe/boom").status_code == 500

    assert value("lms_http_requests_total", **labels) == before + 1


# --- database and Redis errors ----------------------------------------------------------------------

def test_a_database_that_cannot_be_reached_is_counted():
    before = value("lms_database_errors_total", error="OperationalError")
    engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                           connect_args={"connect_timeout": 2})
    try:
        with pytest.raises(Exception):
            with engine.connect():
                pass
    finally:
        engine.dispose()

    assert value("lms_database_errors_total", error="OperationalError") == before + 1


def test_a_constraint_violation_in_a_request_is_counted(client):
    before = value("lms_database_errors_total", error="IntegrityError")

    response = client.post(f"{API}/_probe/duplicate-category")

    assert response.status_code == 409
    assert value("lms_database_errors_total", error="IntegrityError") == before + 1


def test_redis_that_cannot_be_reached_is_counted_and_readiness_says_so(app):
    """A request whose Redis is down: readiness answers 503 and the failed command counts."""
    from app import create_app

    before = value("lms_redis_errors_total", error="ConnectionError")
    down = create_app("testing", overrides={
        "REDIS_URL": "redis://127.0.0.1:1/0", "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
        "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]})

    response = down.test_client().get(f"{API}/health/ready")

    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"] == "unavailable"
    assert value("lms_redis_errors_total", error="ConnectionError") >= before + 1


def test_redis_control_flow_errors_are_not_counted():
    """An unknown script (redis-py loads it and retries) is not a failure of Redis."""
    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    client = redis.Redis.from_url(url, socket_timeout=5)
    before = {name: value("lms_redis_errors_total", error=name)
              for name in ("NoScriptError", "ResponseError")}
    try:
        with pytest.raises(redis.exceptions.NoScriptError):
            client.evalsha("0" * 40, 0)
        script = client.register_script(f"return '{uuid.uuid4().hex}'")
        assert script()  # NOSCRIPT first, loaded, run
        with pytest.raises(redis.exceptions.ResponseError):
            client.execute_command("NO-SUCH-COMMAND")
    finally:
        client.close()

    assert value("lms_redis_errors_total", error="NoScriptError") == before["NoScriptError"]
    assert value("lms_redis_errors_total", error="ResponseError") == before["ResponseError"] + 1


# --- figures read at scrape time ---------------------------------------------------------------------

def test_scrape_time_figures_come_from_the_database(app):
    with app.app_context():
        seed_figures()
        collected = samples(metrics.DatabaseFigures(db.engine).collect())

    for key, expected in EXPECTED.items():
        assert collected.get(key) == pytest.approx(expected), (key, collected.get(key))
    assert collected[("lms_figures_up", (("source", "database"),))] == 1
    assert ("lms_figures_up", (("source", "redis"),)) not in collected  # no Redis given


def test_an_empty_database_reports_no_figures_but_is_up(app):
    with app.app_context():
        collected = samples(metrics.DatabaseFigures(db.engine).collect())

    assert collected == {("lms_certificates_issued_total", ()): 0,
                         ("lms_figures_up", (("source", "database"),)): 1}


def test_a_database_that_cannot_be_read_leaves_the_figures_out_not_the_scrape():
    engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                           connect_args={"connect_timeout": 2})
    try:
        collected = samples(metrics.DatabaseFigures(engine).collect())
    finally:
        engine.dispose()

    assert collected == {("lms_figures_up", (("source", "database"),)): 0}


def test_the_job_queue_depth_comes_from_redis(app):
    from rq import Queue

    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    connection = redis.Redis.from_url(url, socket_timeout=5)
    name = f"lms-metrics-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, connection=connection)
    try:
        for n in range(3):
            queue.enqueue_call("services.jobs.perform", args=(f"job-{n}",))
        from datetime import timedelta

        queue.enqueue_in(timedelta(minutes=5), "services.jobs.perform", "later")
        with app.app_context():
            collected = samples(metrics.DatabaseFigures(db.engine, connection, name).collect())
    finally:
        queue.delete(delete_jobs=True)
        connection.delete(f"rq:scheduled:{name}")
        connection.close()

    assert collected[("lms_job_queue_depth", (("queue", name),))] == 3
    assert collected[("lms_job_queue_scheduled", (("queue", name),))] == 1
    assert collected[("lms_figures_up", (("source", "redis"),))] == 1


def test_a_redis_that_cannot_be_read_leaves_the_queue_out(app):
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    with app.app_context():
        collected = samples(metrics.DatabaseFigures(db.engine, down, "lms").collect())

    assert collected[("lms_figures_up", (("source", "redis"),))] == 0
    assert not [key for key in collected if key[0].startswith("lms_job_queue")]


# --- an exited worker's files --------------------------------------------------------------------------

def _write(path, kind: str, pid, entries: list[tuple[str, dict, float]]) -> None:
    """A worker's file as prometheus_client writes it: (sample name, labels, value) each."""
    store = MmapedDict(os.path.join(path, f"{kind}_{pid}.db"))
    metric = ("lms_http_requests" if kind == "counter" else "lms_http_request_duration_seconds")
    for sample, labels, number in entries:
        store.write_value(mmap_key(metric, sample, list(labels), list(labels.values()), "help"),
                          number, 0.0)
    store.close()


def _totals(path) -> dict:
    return samples(MultiProcessCollector(None, path=str(path)).collect())


def test_an_exited_workers_counts_are_kept_in_one_archive_file(tmp_path):
    rule = {"method": "GET", "endpoint": "/api/v1/health", "status": "200"}
    _write(tmp_path, "counter", 101, [("lms_http_requests_total", rule, 5)])
    _write(tmp_path, "counter", 102, [("lms_http_requests_total", rule, 7)])
    _write(tmp_path, "histogram", 101, [
        ("lms_http_request_duration_seconds_bucket", {"le": "0.1"}, 4),
        ("lms_http_request_duration_seconds_bucket", {"le": "+Inf"}, 1),
        ("lms_http_request_duration_seconds_sum", {}, 0.75)])
    before = _totals(tmp_path)
    key = ("lms_http_requests_total", tuple(sorted(rule.items())))
    assert before[key] == 12

    metrics.worker_exited(101, str(tmp_path))
    # A second worker exits; the archive now holds both, and a third keeps counting.
    metrics.worker_exited(102, str(tmp_path))
    _write(tmp_path, "counter", 103, [("lms_http_requests_total", rule, 2)])

    assert sorted(os.listdir(tmp_path)) == ["counter_103.db", "counter_archive.db",
                                           "histogram_archive.db"]
    after = _totals(tmp_path)
    assert after[key] == 14
    assert after == {**before, key: 14}


def test_a_new_run_starts_from_an_empty_directory(tmp_path):
    _write(tmp_path, "counter", "archive", [("lms_http_requests_total", {"status": "200"}, 9)])
    (tmp_path / "notes.txt").write_text("kept")

    metrics.clear_directory(str(tmp_path))

    assert os.listdir(tmp_path) == ["notes.txt"]


# --- the Grafana dashboard ---------------------------------------------------------------------------------

def _exported(families) -> tuple[set[str], set[str]]:
    """Sample names and label names of metric families, as Prometheus stores them."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names, labels = set(), set()
    for family in families:
        if not family.name.startswith("lms_"):
            continue
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        labels |= {label for sample in family.samples for label in sample.labels}
    return names, labels


def test_the_dashboard_reads_only_metrics_the_app_exports(app, client):
    import json
    from pathlib import Path

    import fakeredis

    client.get(f"{API}/health")  # so the request metrics have samples and labels
    with app.app_context():
        seed_figures()
        figures = list(metrics.DatabaseFigures(db.engine, fakeredis.FakeRedis(), "lms")
                       .collect())
    names, labels = _exported([*REGISTRY.collect(), *figures])
    labels |= {"le", "status", "method", "endpoint", "error"}
    dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana" /
                            "lms-dashboard.json").read_text())

    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\blms_[a-z_]+", target["expr"]))
            assert used and used <= names, (panel["title"], used - names)
            grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", target["expr"])
                       for label in group.split(",")}
            assert grouped <= labels, (panel["title"], grouped - labels)
    covered = {name for panel in panels for target in panel["targets"]
               for name in re.findall(r"\blms_[a-z_]+", target["expr"])}
    # Every figure the issue names has a panel.
    assert covered >= {"lms_http_requests_total", "lms_http_request_duration_seconds_bucket",
                       "lms_database_errors_total", "lms_redis_errors_total",
                       "lms_job_queue_depth", "lms_job_failed_attempts_total",
                       "lms_payments_settled_total", "lms_payments_failed_total",
                       "lms_payments_refunded_total", "lms_certificates_issued_total"}
