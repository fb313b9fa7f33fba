"""The worker's health check (`python -m utils.worker_health`, docker-compose.yml's worker
healthcheck) against a real `flask worker` in a subprocess, on a Redis database of this module's
own (6, or 5 if the suite uses 6): healthy while the worker runs, unhealthy once it has stopped,
for a worker of another host or queue, and without Redis."""
from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from tests.support.gunicorn_server import PUBLIC_BASE_URL, REPO_ROOT, base_env
from tests.support.signing import signing_settings
from tests.support.scratch_services import flushed_redis, own_redis_url
from tests.support.standins import closed_url
from utils.worker_health import check

QUEUE = "lms-health"


@pytest.fixture(scope="module")
def scratch_redis():
    with flushed_redis(own_redis_url(6, 5)) as url:
        yield url


def _env(redis_url: str, tmp_path) -> dict:
    # No periodic tick: the worker then never touches the (empty SQLite) database.
    return base_env(APP_ENV="production", DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
                    REDIS_URL=redis_url, RATE_LIMIT_STORAGE_URL=redis_url, JOBS_BACKEND="rq",
                    JOBS_QUEUE=QUEUE, JOBS_TICK_SECONDS="0", PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                    SESSION_SECRET=secrets.token_hex(16), JWT_SECRET_KEY=secrets.token_hex(32),
                    LOG_FORMAT="json", LOG_LEVEL="INFO", **signing_settings())


def _health(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.worker_health"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=30)


def test_healthy_while_the_worker_runs_and_not_once_it_stopped(scratch_redis, tmp_path):
    env = _env(scratch_redis, tmp_path)
    connection = redis.Redis.from_url(scratch_redis, socket_timeout=5)
    assert _health(env).returncode == 1  # no worker yet
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "worker"],
                              cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not check(connection, QUEUE,
                                                        socket.gethostname())[0]:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)

        running = _health(env)
        assert running.returncode == 0, running.stdout + running.stderr
        assert running.stdout.startswith("healthy: RQ worker ")
        assert f"serves '{QUEUE}'" in running.stdout
        # The same worker, asked about from another host or for another queue.
        assert check(connection, QUEUE, "another-host") == (
            False, "no RQ worker of another-host is registered")
        assert not check(connection, "other-queue", socket.gethostname())[0]
    finally:
        worker.send_signal(signal.SIGTERM)  # a warm shutdown deregisters the worker
        worker.wait(timeout=30)
        log.close()

    stopped = _health(env)
    assert stopped.returncode == 1
    assert stopped.stdout.strip() == (f"unhealthy: no RQ worker of {socket.gethostname()} "
                                      "is registered")
    connection.close()


def test_unhealthy_when_redis_cannot_be_reached(tmp_path):
    url = closed_url().replace("http://", "redis://") + "/0"

    result = _health(_env(url, tmp_path))

    assert result.returncode == 1
    assert result.stdout.strip() == "unhealthy: Redis cannot be reached: ConnectionError"
