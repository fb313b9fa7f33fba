"""gunicorn settings for production: `gunicorn app:app` reads this file by default.

Every value can be overridden from the environment (GUNICORN_WORKERS, PORT, ...)."""
import gc
import multiprocessing
import os
import shutil
import tempfile

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# Sync workers: the API's work is short database round trips; measured here, gthread and
# gevent gave worse tail latency under keep-alive.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
# WEB_CONCURRENCY: what Heroku sets for the dyno's size.
workers = int(os.environ.get("GUNICORN_WORKERS") or os.environ.get("WEB_CONCURRENCY")
              or multiprocessing.cpu_count() * 2)
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# Password hashing is CPU-bound: at most one hash per core but one runs at a time on a host
# (utils/pipeline/hash_slots.py), so a burst of sign-ins leaves CPU and workers for every other
# request; sign-ins beyond that wait briefly, then answer 503 busy. Set before the app loads.
os.environ.setdefault("PASSWORD_HASH_SLOTS", str(max(1, multiprocessing.cpu_count() - 1)))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow without bound; not so often that a
# busy worker restarts every few seconds (at 5,000 it did under `make bench`, each restart a
# cold start: new connections, the catalog fast path learning again, in the latency's tail).
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
# Each sync worker touches its heartbeat file (fchmod) once per request. In a disk-backed /tmp
# (ext4 here, the container's overlay in Docker) that metadata write now and then waits for the
# filesystem's journal commit, stalling every worker at once: under `make bench` one read in a
# hundred took 4-7x its median. In memory (/dev/shm, where there is one) it never waits.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", None)  # the app logs each request itself
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn believes no forwarded header from anyone: the app does, from TRUSTED_PROXIES only
# (utils/pipeline/client_address.py), so one setting decides whom the app trusts.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
# Build the app once in the master, so a configuration error stops start-up with one line
# instead of every worker failing to boot in turn.
preload_app = True
# gunicorn's control socket sits at one fixed path per user by default, which two servers on a
# host would share; the API does not use it.
control_socket_disable = True

# Metrics (utils/metrics.py): each worker counts into files of prometheus_client's multiprocess
# mode, in a directory that must be known before the app is imported; with METRICS_PORT set, the
# master serves their sum. A directory given in PROMETHEUS_MULTIPROC_DIR is emptied at start.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lms-metrics-")
    os.environ["LMS_METRICS_DIR_OWNED"] = "1"  # this file made it: on_exit removes it


def on_starting(server):
    from utils import metrics

    metrics.clear_directory(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def when_ready(server):
    config = getattr(server.app.wsgi(), "config", {})  # preloaded: the app the workers run
    if config.get("METRICS_PORT"):
        from utils import metrics

        metrics.serve(config, config["METRICS_ADDRESS"], config["METRICS_PORT"])
        server.log.info("Metrics at http://%s:%s/metrics", config["METRICS_ADDRESS"],
                        config["METRICS_PORT"])


def pre_fork(server, worker):
    # The preloaded app's objects (modules, the mapper, the routes) live as long as the worker:
    # moved out of the collector's reach, a full collection in a worker walks only what the
    # worker made since (shorter pauses, the tail of the latency), and the pages holding them
    # stay shared with the master instead of being copied when the collector touches them.
    gc.collect()
    gc.freeze()


def post_fork(server, worker):
    from utils import metrics

    metrics.close_in_worker()  # the master's metrics socket, inherited by the fork


def child_exit(server, worker):
    from utils import metrics

    metrics.worker_exited(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server):
    if os.environ.get("LMS_METRICS_DIR_OWNED") == "1":
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
