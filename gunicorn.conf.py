"""gunicorn settings for production: `gunicorn app:app` reads this file by default.

Every value can be overridden from the environment (GUNICORN_WORKERS, PORT, ...)."""
import multiprocessing
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
# Sync workers: the API's work is short database round trips; measured here, gthread and
# gevent gave worse tail latency under keep-alive.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# Password hashing is CPU-bound: at most one hash per core but one runs at a time on a host
# (utils/pipeline/hash_slots.py), so a burst of sign-ins leaves CPU and workers for every other
# request; sign-ins beyond that wait briefly, then answer 503 busy. Set before the app loads.
os.environ.setdefault("PASSWORD_HASH_SLOTS", str(max(1, multiprocessing.cpu_count() - 1)))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "5000"))
max_requests_jitter = 500
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", None)  # the app logs each request itself
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Build the app once in the master, so a configuration error stops start-up with one line
# instead of every worker failing to boot in turn.
preload_app = True
# gunicorn's control socket sits at one fixed path per user by default, which two servers on a
# host would share; the API does not use it.
control_socket_disable = True
