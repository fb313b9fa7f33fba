"""Where a request's milliseconds go: each hot read served in process (the real app, production
settings, PostgreSQL and Redis as `make bench` uses them) under cProfile, its CPU split by the
package that spent it. `python bench/hotpath.py` seeds a scratch database with bench/run.py's
dataset, prints one table (ms per request by package) and drops the database.

BENCH_DATABASE_URL / BENCH_REDIS_URL / BENCH_DB_PREFIX as for bench/run.py; PROFILE_REQUESTS
requests per read (default 200)."""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402

REQUESTS = int(os.environ.get("PROFILE_REQUESTS", "200"))
# Self time of a function goes to the first of these its file path contains.
BUCKETS = (
    ("sqlalchemy", "/sqlalchemy/"), ("psycopg2 (db wait)", "psycopg2"),
    ("redis", "/redis/"), ("limiter", "/flask_limiter/"), ("limiter", "/limits/"),
    ("jwt", "/jwt/"), ("jwt", "/flask_jwt_extended/"), ("pydantic/spectree", "/pydantic"),
    ("pydantic/spectree", "/spectree/"), ("talisman/cors", "/flask_talisman/"),
    ("talisman/cors", "/flask_cors/"), ("flask/werkzeug", "/flask/"),
    ("flask/werkzeug", "/werkzeug/"), ("our code", str(ROOT)),
)


def bucket(filename: str, function: str = "") -> str:
    if filename == "~":  # a builtin: C code, named by the type it belongs to
        if "psycopg2" in function:
            return "psycopg2 (db wait)"
        if "socket" in function or "select" in function or "poll" in function:
            return "redis"
    for name, needle in BUCKETS:
        if needle in filename:
            return name
    return "other (stdlib, builtins)"


STATEMENTS = [0]


def count_statements(*_args) -> None:
    STATEMENTS[0] += 1


def profile(client, method: str, url: str, headers: dict, body: str | None) -> dict:
    call = getattr(client, method.lower())
    kwargs = {"headers": headers}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    for _ in range(20):  # warm: caches, pools, lazy imports
        status = call(url, **kwargs).status_code
    profiler = cProfile.Profile()
    STATEMENTS[0] = 0
    started = time.perf_counter()
    profiler.enable()
    for _ in range(REQUESTS):
        call(url, **kwargs)
    profiler.disable()
    wall = (time.perf_counter() - started) * 1000 / REQUESTS
    split: dict[str, float] = {}
    others: dict[str, float] = {}
    for (filename, line, function), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():
        name = bucket(filename, function)
        split[name] = split.get(name, 0) + tottime * 1000 / REQUESTS
        if name.startswith("other"):
            others[f"{filename}:{line}:{function}"] = tottime * 1000 / REQUESTS
    if os.environ.get("PROFILE_OTHERS"):
        print(sorted(others.items(), key=lambda kv: -kv[1])[:15], file=sys.stderr)
    return {"status": status, "wall_ms": wall, "split": split,
            "statements": STATEMENTS[0] / REQUESTS}


def measure(course: int, enrollment: int, lesson: int) -> dict:
    """In the child process, whose environment is the API's production one."""
    from app import create_app
    app = create_app("production")
    with app.app_context():
        from sqlalchemy import event
        from models import db
        event.listen(db.engine, "before_cursor_execute", count_statements)
    client = app.test_client()
    student = {"Authorization": "Bearer " + client.post(
        "/api/v1/auth/login", json={"email": "bench-student@example.com",
                                    "password": run.PASSWORD}).get_json()["access_token"]}
    reads = [
        ("public list (cached)", "GET", "/api/v1/public/get-courses?per_page=20", {}, None),
        ("public list (uncached)", "GET", "/api/v1/public/get-courses?per_page=20", student,
         None),
        ("course detail, enrolled", "GET", f"/api/v1/courses/{course}", student, None),
        ("unread count", "GET", "/api/v1/notifications/unread-count", student, None),
        ("student dashboard", "GET", "/api/v1/users/dashboard", student, None),
        ("public detail (cached)", "GET", f"/api/v1/public/courses/{course}", {}, None),
        ("enrolled courses", "GET", "/api/v1/users/enrolled-courses", student, None),
        ("notifications list", "GET", "/api/v1/notifications", student, None),
        ("certificates list", "GET", "/api/v1/users/certificates", student, None),
        ("progress by lesson", "GET", f"/api/v1/enrollments/{enrollment}/progress", student,
         None),
        ("progress write", "POST",
         f"/api/v1/enrollments/{enrollment}/lessons/{lesson}/complete", student, "{}"),
    ]
    return {name: profile(client, *spec) for name, *spec in reads}


def main() -> int:
    url, root = run.create_database()
    try:
        data = run.seed(url)
        env = {**run.api_env(url, 30), "PYTHONPATH": str(ROOT)}
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(data["course_id"]),
             str(data["enrollment_id"]), str(data["lesson_id"])],
            env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        results = json.loads(output.strip().splitlines()[-1])
    finally:
        with root.connect() as conn:
            conn.execute(run.text(f'DROP DATABASE IF EXISTS "{run.make_url(url).database}" '
                                  "WITH (FORCE)"))
        root.dispose()
    names = sorted({b for r in results.values() for b in r["split"]})
    print(f"{'read':26} {'status':>6} {'stmts':>5} {'wall ms':>8} " + " ".join(f"{n[:12]:>12}" for n in names))
    for read, r in results.items():
        print(f"{read:26} {r['status']:>6} {r['statements']:>5.1f} {r['wall_ms']:>8.2f} "
              + " ".join(f"{r['split'].get(n, 0):>12.2f}" for n in names))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(*map(int, sys.argv[2:5]))))
        sys.exit(0)
    sys.exit(main())
