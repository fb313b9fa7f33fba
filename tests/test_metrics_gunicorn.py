"""The metrics endpoint of a real gunicorn with two workers (gunicorn.conf.py: prometheus_client's
multiprocess mode, the master serving METRICS_PORT), on a scratch PostgreSQL database and a
Redis database of this module's own (8, or 7 if the suite uses 8).

Traffic is sent until both workers have answered; the app's request log says how many each
answered, and the scrape must show each worker's count in its own file and their sum on the
endpoint. A worker then exits and is replaced: its counts stay in the sum. The scrape also
carries the figures read from the database (payments, certificates, jobs) and the RQ queue.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
import redis
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from app import create_app
from config import normalise_database_url
from models import db
from tests.support.figures import EXPECTED, samples, seed_figures
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask
from tests.support.scratch_services import flushed_redis, own_redis_url, scratch_postgres
from tests.support.standins import free_port

API = "/api/v1"
QUEUE = "lms-metrics-scrape"
MAX_ROUNDS = 5
HEALTH = (("endpoint", "/api/v1/health"), ("method", "GET"), ("status", "200"))


@pytest.fixture(scope="module")
def scratch_database():
    with scratch_postgres("lms_metrics") as url:
        yield url


@pytest.fixture(scope="module")
def scratch_redis():
    with flushed_redis(own_redis_url(8, 7)) as url:
        yield url


@pytest.fixture(scope="module")
def metrics_server(scratch_database, scratch_redis, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("metrics")
    port = free_port()
    env = production_env(scratch_database, scratch_redis, METRICS_PORT=str(port),
                         METRICS_ADDRESS="127.0.0.1", JOBS_QUEUE=QUEUE,
                         PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    run_flask(env, "db", "upgrade")
    seeding = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(scratch_database)})
    with seeding.app_context():
        seed_figures()
        db.session.remove()
        db.engine.dispose()
    # A file a previous run left behind must not be counted as this run's.
    stale = MmapedDict(str(metrics_dir / "counter_99999.db"))
    stale.write_value('["lms_http_requests", "lms_http_requests_total", {"endpoint": '
                      '"/api/v1/health", "method": "GET", "status": "200"}, "help"]', 1000, 0)
    stale.close()
    server = GunicornServer(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log",
                            workers=2)
    server.start(ready_timeout=30)
    server.metrics_url = f"http://127.0.0.1:{port}/metrics"
    server.metrics_dir = metrics_dir
    try:
        assert len(server.worker_pids) == 2, server.log_tail()
        yield server
    finally:
        server.stop()


def scrape(server) -> dict:
    response = requests.get(server.metrics_url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(text_string_to_metric_families(response.text))


def worker_file_count(server, pid: int) -> float:
    """The health count in one worker's own counter file."""
    path = server.metrics_dir / f"counter_{pid}.db"
    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
        if '"lms_http_requests_total"' in key and '"/api/v1/health"' in key and '"200"' in key:
            return value
    return 0.0


def send_until_both_workers(server, count: int):
    answers = []
    for _ in range(MAX_ROUNDS):
        answers += server.send_many(count, "GET", f"{API}/health")
        if {a.pid for a in answers} >= server.worker_pids:
            break
    assert {a.pid for a in answers} == server.worker_pids, server.log_tail()
    assert all(a.status == 200 for a in answers)
    return answers


def test_the_scrape_sums_the_counts_of_both_workers(metrics_server):
    answers = send_until_both_workers(metrics_server, 20)
    per_worker = Counter(a.pid for a in answers)

    scraped = scrape(metrics_server)

    # Each worker's own file holds what that worker answered (the request log says which)...
    for pid in metrics_server.worker_pids:
        assert worker_file_count(metrics_server, pid) == per_worker[pid], per_worker
    # ...and the endpoint serves their sum, without the stale file's 1000.
    assert scraped[("lms_http_requests_total", HEALTH)] == len(answers)
    timing = (("endpoint", "/api/v1/health"), ("method", "GET"))
    assert scraped[("lms_http_request_duration_seconds_count", timing)] == len(answers)
    every = tuple(sorted((*timing, ("le", "+Inf"))))
    assert scraped[("lms_http_request_duration_seconds_bucket", every)] == len(answers)
    assert not (metrics_server.metrics_dir / "counter_99999.db").exists()


def test_an_exited_workers_counts_stay_in_the_sum(metrics_server):
    before = scrape(metrics_server)[("lms_http_requests_total", HEALTH)]
    victim = min(metrics_server.worker_pids)

    os.kill(victim, signal.SIGTERM)  # the master replaces it, as after max_requests
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        text = metrics_server.log_text()
        booted = text.count("Booting worker with pid")
        if victim not in pids and booted >= 3 and \
                not (metrics_server.metrics_dir / f"counter_{victim}.db").exists():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker {victim} was not replaced:\n{metrics_server.log_tail()}")

    after = scrape(metrics_server)
    assert after[("lms_http_requests_total", HEALTH)] == before
    assert (metrics_server.metrics_dir / "counter_archive.db").exists()


def test_the_scrape_carries_the_database_figures_and_the_queue(metrics_server, scratch_redis):
    connection = redis.Redis.from_url(scratch_redis, socket_timeout=5)
    queue = Queue(QUEUE, connection=connection)
    try:
        for n in range(4):
            queue.enqueue_call("services.jobs.perform", args=(f"waiting-{n}",))
        scraped = scrape(metrics_server)
    finally:
        queue.delete(delete_jobs=True)
        connection.close()

    for key, expected in EXPECTED.items():
        assert scraped.get(key) == pytest.approx(expected), (key, scraped.get(key))
    assert scraped[("lms_job_queue_depth", (("queue", QUEUE),))] == 4
    assert scraped[("lms_figures_up", (("source", "database"),))] == 1
    assert scraped[("lms_figures_up", (("source", "redis"),))] == 1


def test_metrics_are_not_served_on_the_app_port(metrics_server):
    answer = metrics_server.send("GET", "/metrics")

    assert answer.status == 404
    assert "lms_http_requests_total" not in str(answer.body)


def test_each_workers_heartbeat_file_is_in_memory(metrics_server):
    """gunicorn.conf.py's worker_tmp_dir: a sync worker touches its heartbeat file once a
    request, and on a disk-backed /tmp that metadata write now and then waits for the journal,
    stalling every worker at once (the latency's tail under `make bench`)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this host: gunicorn keeps its default")
    master = metrics_server._process.pid
    with open(f"/proc/{master}/task/{master}/children") as children:
        workers = [int(pid) for pid in children.read().split()]
    assert workers, metrics_server.log_tail()
    for pid in workers:
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        heartbeat = [target for target in targets if "wgunicorn-" in target]
        assert len(heartbeat) == 1, targets
        assert heartbeat[0].startswith("/dev/shm/"), heartbeat
