"""Health check of the RQ worker on this host: `python -m utils.worker_health`.

Exits 0 when a worker started on this host (its hostname, which is the container's) is
registered in Redis for the JOBS_QUEUE queue, 1 otherwise, printing one line either way. RQ keeps
a worker's registration alive with a heartbeat and lets it expire worker_ttl + 60 seconds after
the last one (its main loop heartbeats at least every worker_ttl - 15 seconds, while a job runs
too), so a registered worker is one whose loop is running and reaching Redis. Imports neither
Flask nor the app: the check costs a fraction of a second at every health-check interval.
"""
from __future__ import annotations

import socket
import sys

import redis

from config import Config


def check(connection: redis.Redis, queue_name: str, hostname: str) -> tuple[bool, str]:
    # rq only when the check runs, so importing this module stays cheap.
    from rq import Worker

    workers = [worker for worker in Worker.all(connection=connection)
               if worker.hostname == hostname]
    if not workers:
        return False, f"no RQ worker of {hostname} is registered"
    serving = [worker for worker in workers if queue_name in worker.queue_names()]
    if not serving:
        return False, f"the RQ workers of {hostname} do not serve the queue {queue_name!r}"
    worker = serving[0]
    return True, (f"RQ worker {worker.name} (pid {worker.pid}) serves {queue_name!r}, "
                  f"last heartbeat {worker.last_heartbeat:%Y-%m-%dT%H:%M:%SZ}")


def main() -> int:
    if not Config.REDIS_URL:
        print("unhealthy: REDIS_URL is not set, so no worker can be running")
        return 1
    connection = redis.Redis.from_url(Config.REDIS_URL, socket_connect_timeout=3,
                                      socket_timeout=3)
    try:
        healthy, reason = check(connection, Config.JOBS_QUEUE, socket.gethostname())
    except redis.RedisError as exc:
        healthy, reason = False, f"Redis cannot be reached: {type(exc).__name__}"
    finally:
        connection.close()
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
