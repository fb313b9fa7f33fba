"""Firing requests at the same instant, for race tests."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


def all_at_once(calls: list) -> list:
    """Run the callables together, each on a thread of its own released by one barrier; their
    results in order (an exception in one is raised here)."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(run, call) for call in calls]]


def fire_together(app, n: int, method: str, path: str, headers: dict, json=None) -> list:
    """`n` identical requests from `n` threads, each with its own test client, released at once
    by a barrier. Returns [(status, body)]; fails if a request hung or raised."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        client = app.test_client()
        try:
            barrier.wait(timeout=30)
            response = client.open(path, method=method, headers=headers, json=json)
            results[i] = (response.status_code, response.get_json())
        except BaseException as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert all(isinstance(r, tuple) for r in results), results
    return results
