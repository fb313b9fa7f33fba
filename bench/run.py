"""`make bench`: the API under load, against a bare-Flask baseline, on this machine.

1. Creates a scratch PostgreSQL database (BENCH_DATABASE_URL's server; default the local one),
   applies the migrations and seeds a large dataset with set-based SQL: 50,000 users,
   1,000 courses with 4,000 modules and 20,000 lessons, 100,000 enrollments, 100,000
   payments, 10,000 certificates.
2. Starts gunicorn as production would (gunicorn.conf.py, 4 sync workers, PostgreSQL, Redis,
   rate limits on but high) for the API, and the same for bench/baseline.py.
3. Drives each scenario with wrk (32 connections, BENCH_SECONDS each) on 127.0.0.1 and prints
   one table: requests/s, p50, p99, errors and the ratio to the baseline, measured for
   BASELINE_SECONDS right before each read (this machine's speed drifts by a third within a
   run: a ratio to one baseline taken minutes earlier said more about the drift than the read). Every route carries
   a (high) rate limit; the same authenticated read is also measured on a server without rate
   limiting, and a read while 16 connections sign in at once.
4. Then: one broadcast to all 50,000 users (e-mail queued as a job), and in process
   (bench/inprocess.py): a certificate PDF's time and size, bulk issuance for a course with
   1,000 completed enrollments, and one password check in each scheme. Everything goes to
   bench/results/latest.json.

Everything it starts, it stops; the scratch database is dropped at the end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from config import _dev_signing_material  # noqa: E402

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# The scratch database's name starts with this (several checkouts may bench on one server).
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "lms_bench")
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
BASELINE_SECONDS = int(os.environ.get("BENCH_BASELINE_SECONDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
WORKERS = os.environ.get("BENCH_WORKERS", "4")
PASSWORD = "Bench-Passw0rd"
# Issue 21's targets: each read's req/s as a share of the bare-Flask run (and p99 <= 2x p50).
TARGETS = {
    "public course list (cached)": 0.6, "public course detail (cached)": 0.6,
    "search (cached)": 0.6, "public course list (uncached)": 0.25,
    "public course detail (uncached)": 0.25, "course detail, enrolled student": 0.2,
    "student dashboard": 0.2, "enrolled courses": 0.2, "notifications unread count": 0.2,
    "notifications list": 0.2, "progress lesson by lesson": 0.2, "certificates list": 0.2,
    "progress update": 0.15,
}
HIGH = "1000000 per minute"

# The ten categories and fifty subcategories every bench dataset files its courses under
# (bench/scale.py seeds them too).
CATEGORIES_SEED = """
INSERT INTO master_categories (name, slug, position, is_active, created_at, updated_at)
SELECT 'Category ' || n, 'category-' || n, n, true, now(), now() FROM generate_series(1, 10) n;

INSERT INTO subcategories (master_category_id, name, slug, position, is_active, created_at,
                           updated_at)
SELECT 1 + (n % 10), 'Subcategory ' || n, 'subcategory-' || n, n, true, now(), now()
FROM generate_series(1, 50) n;
"""

SEED = """
INSERT INTO users (email, password_hash, first_name, last_name, role, is_active,
                   is_email_verified, is_phone_verified, failed_login_attempts, created_at,
                   updated_at)
SELECT CASE WHEN n = 1 THEN 'bench-admin@example.com' WHEN n = 2 THEN 'bench-student@example.com'
            ELSE 'user' || n || '@bench.example' END,
       :hash, 'First' || n, 'Last' || n,
       CASE WHEN n = 1 THEN 'admin' WHEN n <= 52 AND n > 2 THEN 'instructor' ELSE 'student' END,
       true, true, false, 0, now() - (n || ' minutes')::interval, now()
FROM generate_series(1, 50000) AS n;

""" + CATEGORIES_SEED + """
INSERT INTO courses (title, slug, short_description, description, price, currency, difficulty,
                     learning_outcomes, language, mode_of_conduct, status, subcategory_id,
                     instructor_id, published_at, created_at, updated_at)
SELECT CASE n % 4 WHEN 0 THEN 'Python for data work ' WHEN 1 THEN 'Machine learning basics '
              WHEN 2 THEN 'Web APIs with Flask ' ELSE 'Statistics in practice ' END || n,
       'bench-course-' || n, 'A course about topic ' || n,
       'Long description of course ' || n || ' covering python, data, models and practice.',
       CASE WHEN n % 5 = 0 THEN 0 ELSE (n % 90) + 9.99 END, 'USD',
       (ARRAY['beginner','intermediate','advanced'])[1 + n % 3], '["outcome one", "outcome two"]',
       'English', 'ONLINE', 'published', 1 + (n % 50), 3 + (n % 50),
       now() - (n || ' hours')::interval, now() - (n || ' hours')::interval, now()
FROM generate_series(1, 1000) n;

INSERT INTO modules (course_id, title, position, created_at, updated_at)
SELECT c, 'Module ' || m, m - 1, now(), now()
FROM generate_series(1, 1000) c, generate_series(1, 4) m;

INSERT INTO lessons (module_id, title, content, video_url, duration_minutes, position,
                     is_preview, created_at, updated_at)
SELECT md, 'Lesson ' || l, 'Body of lesson ' || l, 'https://videos.example.com/' || md || '/' || l,
       10, l - 1, l = 1, now(), now()
FROM generate_series(1, 4000) md, generate_series(1, 5) l;

INSERT INTO enrollments (user_id, course_id, status, progress_percent, enrolled_at, started_at,
                         completed_at, created_at, updated_at)
SELECT u, c, CASE WHEN (u + k) % 5 = 0 THEN 'completed' ELSE 'active' END,
       CASE WHEN (u + k) % 5 = 0 THEN 100 ELSE (u % 100) END,
       now() - ((u % 365) || ' days')::interval, now() - ((u % 365) || ' days')::interval,
       CASE WHEN (u + k) % 5 = 0 THEN now() - ((u % 300) || ' days')::interval END, now(), now()
FROM (SELECT u, k, 1 + ((u * (k + 3) + k * 17) % 1000) AS c
      FROM generate_series(2, 50001) u, generate_series(0, 1) k) pairs
WHERE u <= 50000
ON CONFLICT DO NOTHING;

INSERT INTO payments (user_id, course_id, gateway, amount, currency, status, refunded_amount,
                      invoice_number, paid_at, created_at, updated_at)
SELECT e.user_id, e.course_id, CASE WHEN e.id % 2 = 0 THEN 'stripe' ELSE 'razorpay' END,
       (e.course_id % 90) + 9.99, 'USD',
       CASE WHEN e.id % 20 = 0 THEN 'refunded' ELSE 'completed' END, 0,
       'INV-BENCH-' || e.id, e.enrolled_at, e.enrolled_at, now()
FROM enrollments e ORDER BY e.id LIMIT 100000;

INSERT INTO certificates (certificate_number, user_id, course_id, enrollment_id, holder_name,
                          course_title, completion_date, status, issued_at)
SELECT 'AIFA-' || e.course_id || '-' || e.user_id || '-' || upper(substr(md5(e.id::text), 1, 10)),
       e.user_id, e.course_id, e.id, 'Holder ' || e.user_id, 'Course ' || e.course_id,
       (e.completed_at)::date, 'valid', e.completed_at
FROM enrollments e WHERE e.status = 'completed' ORDER BY e.id LIMIT 10000;

INSERT INTO lesson_progress (enrollment_id, lesson_id, completed, completed_at, watch_time_seconds,
                             started_at, last_accessed_at, created_at, updated_at)
SELECT e.id, l.id, true, now(), 300, now(), now(), now(), now()
FROM enrollments e JOIN modules m ON m.course_id = e.course_id
JOIN lessons l ON l.module_id = m.id AND l.position = 0
WHERE e.user_id = 2;

INSERT INTO courses (title, slug, short_description, price, currency, difficulty,
                     learning_outcomes, language, mode_of_conduct, status, subcategory_id,
                     instructor_id, published_at, created_at, updated_at)
VALUES ('Bulk certificates course', 'bench-bulk-course', 'For bulk issuance', 0, 'USD',
        'beginner', '[]', 'English', 'ONLINE', 'published', 1, 3, now(), now(), now());

INSERT INTO enrollments (user_id, course_id, status, progress_percent, enrolled_at, started_at,
                         completed_at, created_at, updated_at)
SELECT u, (SELECT id FROM courses WHERE slug = 'bench-bulk-course'), 'completed', 100,
       now() - interval '30 days', now() - interval '30 days', now() - interval '1 day',
       now(), now()
FROM generate_series(1001, 2000) u;

INSERT INTO notifications (user_id, kind, title, message, is_read, created_at)
SELECT 2, 'announcement', 'Notice ' || n, 'Message ' || n, n % 3 = 0, now()
FROM generate_series(1, 200) n;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def create_database() -> tuple[str, object]:
    server = make_url(SERVER)
    name = f"{DB_PREFIX}_{uuid.uuid4().hex[:8]}"
    root = create_engine(server, isolation_level="AUTOCOMMIT")
    with root.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return server.set(database=name).render_as_string(hide_password=False), root


def seed(url: str) -> dict:
    env = {**os.environ, "DATABASE_URL": url, "APP_ENV": "development", "FLASK_APP": "app.py"}
    subprocess.run([sys.executable, "-m", "flask", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    engine = create_engine(url)
    started = time.perf_counter()
    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:600000")
    with engine.begin() as conn:
        for statement in SEED.split(";\n"):
            if statement.strip():
                conn.execute(text(statement), {"hash": password_hash} if ":hash" in statement else {})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        counts = {table: conn.scalar(text(f"SELECT count(*) FROM {table}")) for table in
                  ("users", "courses", "modules", "lessons", "enrollments", "payments",
                   "certificates")}
        enrollment = conn.execute(text(
            "SELECT e.id, e.course_id, l.id FROM enrollments e JOIN modules m ON "
            "m.course_id = e.course_id JOIN lessons l ON l.module_id = m.id "
            "WHERE e.user_id = 2 ORDER BY e.id, m.position, l.position LIMIT 1")).one()
        bulk_course = conn.scalar(text("SELECT id FROM courses WHERE slug = 'bench-bulk-course'"))
    engine.dispose()
    log(f"seeded in {time.perf_counter() - started:.1f}s: {counts}")
    return {"counts": counts, "enrollment_id": enrollment[0], "course_id": enrollment[1],
            "lesson_id": enrollment[2], "bulk_course_id": bulk_course}


def start_gunicorn(module: str, port: int, env: dict, logfile) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", module, "-c", str(ROOT / "gunicorn.conf.py"),
               "--workers", WORKERS, "--bind", f"127.0.0.1:{port}", "--worker-class", "sync"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=logfile, stderr=logfile,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return process  # any HTTP answer: the server is up
        except OSError:
            time.sleep(0.2)
            continue
        return process
    stop(process)
    raise RuntimeError(f"gunicorn {module} did not start")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


UPLOADS = tempfile.mkdtemp(prefix="lms-bench-uploads-")
# Production refuses to start without signing keys: the benchmark's own, made like a
# development server's.
SIGNING = _dev_signing_material(ROOT / "instance" / "bench-signing")


def api_env(url: str, cache_seconds: int, limits: bool = True) -> dict:
    """Production settings; every route rate-limited (a default limit, high enough never to
    refuse), or no rate limiting at all (`limits=False`, the unprotected comparison)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    return {**keep, "APP_ENV": "production", "DATABASE_URL": url, "REDIS_URL": REDIS,
            "RATE_LIMIT_STORAGE_URL": REDIS, "SESSION_SECRET": "bench-session-secret",
            "JWT_SECRET_KEY": "bench-jwt-secret-of-enough-length-0123456789",
            "PUBLIC_BASE_URL": "https://lms.example.test",
            "FORCE_HTTPS": "False", "LOG_LEVEL": "WARNING", "OTP_REQUIRED": "False",
            "CATALOG_CACHE_SECONDS": str(cache_seconds), "UPLOAD_FOLDER": UPLOADS,
            "RATELIMIT_ENABLED": str(limits), "RATELIMIT_DEFAULT": HIGH,
            "IP_BLOCK_MAX_ACCOUNTS": "1000000000", **SIGNING,
            **{name: HIGH for name in ("RATE_LIMIT_LOGIN", "RATE_LIMIT_PUBLIC", "RATE_LIMIT_SEARCH",
                                       "RATE_LIMIT_REGISTER", "RATE_LIMIT_REFRESH")}}


def login(port: int, email: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/auth/login", method="POST",
        data=json.dumps({"email": email, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["access_token"]


def wrk(url: str, *, headers: dict | None = None, method: str = "GET", body: str | None = None,
        seconds: int = SECONDS, connections: int = CONNECTIONS) -> dict:
    script = None
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
               "--timeout", "10s"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if method != "GET":
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(f'wrk.method = "{method}"\nwrk.body = {json.dumps(body or "")}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
        script.close()
        command += ["-s", script.name]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    if script:
        os.unlink(script.name)

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                              output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return {"rps": round(requests, 1), "p50_ms": round(latency("50"), 2),
            "p99_ms": round(latency("99"), 2), "errors": errors}


def beside_baseline(base_url: str) -> float:
    """The bare-Flask baseline's req/s now: measured right before each read."""
    return wrk(base_url, seconds=BASELINE_SECONDS)["rps"]


def during_login_flood(port: int, read_url: str, headers: dict) -> dict:
    """A read's latency while 16 connections sign in as fast as they can (Argon2id, under the
    host's hashing bound): how much the hashing delays everything else."""
    body = json.dumps({"email": "bench-student@example.com", "password": PASSWORD})
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    flood = subprocess.Popen(
        ["wrk", "-t", "1", "-c", "16", "-d", f"{SECONDS + 2}s", "--timeout", "10s", "-s",
         script.name, f"http://127.0.0.1:{port}/api/v1/auth/login"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    read = wrk(read_url, headers=headers, connections=8)
    output = flood.communicate()[0]
    os.unlink(script.name)
    logins = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    read["concurrent_logins_per_s"] = round(logins, 1)
    read["logins_refused_busy"] = int(refused.group(1)) if refused else 0
    return read


def timed_post(url: str, headers: dict, body: dict) -> dict:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **headers})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
        status = response.status
    return {"seconds": round(time.perf_counter() - started, 2), "status": status,
            "recipients": answer.get("recipients")}


def rss_mb(master: subprocess.Popen) -> float:
    """The largest worker's resident memory, in MB."""
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True,
                              text=True).stdout.split()
    sizes = []
    for pid in children:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)
        except (OSError, AttributeError):
            pass
    return round(max(sizes or [0]), 1)


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    url, root = create_database()
    processes: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    logfile = open(ROOT / "bench" / "results" / "gunicorn.log", "w")
    try:
        data = seed(url)
        subprocess.run(["redis-cli", "-u", REDIS, "flushdb"], capture_output=True)
        base_port, api_port, cached_port = free_port(), free_port(), free_port()
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
        processes.append(start_gunicorn("bench.baseline:app", base_port,
                                        {**keep, "PYTHONPATH": str(ROOT)}, logfile))
        api = start_gunicorn("app:app", api_port, api_env(url, 0), logfile)
        processes.append(api)
        student = {"Authorization": f"Bearer {login(api_port, 'bench-student@example.com')}"}
        admin = {"Authorization": f"Bearer {login(api_port, 'bench-admin@example.com')}"}
        api_url = f"http://127.0.0.1:{api_port}/api/v1"
        course, enrollment, lesson = data["course_id"], data["enrollment_id"], data["lesson_id"]
        scenarios = [
            ("baseline: bare Flask JSON", f"http://127.0.0.1:{base_port}/bare", {}),
            ("public course list (uncached)",
             f"{api_url}/public/get-courses?per_page=20&difficulty=beginner", {}),
            ("public course detail (uncached)", f"{api_url}/public/courses/{course}", {}),
            ("search (uncached)", f"{api_url}/public/courses/search?q=python", {}),
            ("course detail, enrolled student", f"{api_url}/courses/{course}",
             {"headers": student}),
            ("progress update", f"{api_url}/enrollments/{enrollment}/lessons/{lesson}/complete",
             {"headers": student, "method": "POST", "body": json.dumps(
                 {"watch_time_seconds": 120})}),
            ("notifications unread count", f"{api_url}/notifications/unread-count",
             {"headers": student}),
            ("student dashboard", f"{api_url}/users/dashboard", {"headers": student}),
            ("enrolled courses", f"{api_url}/users/enrolled-courses", {"headers": student}),
            ("notifications list", f"{api_url}/notifications", {"headers": student}),
            ("progress lesson by lesson", f"{api_url}/enrollments/{enrollment}/progress",
             {"headers": student}),
            ("certificates list", f"{api_url}/users/certificates", {"headers": student}),
            ("admin dashboard", f"{api_url}/admin/dashboard", {"headers": admin}),
            ("admin analytics", f"{api_url}/admin/analytics", {"headers": admin}),
            ("login (Argon2id), 4 connections", f"{api_url}/auth/login",
             {"method": "POST", "connections": 4, "body": json.dumps(
                 {"email": "bench-student@example.com", "password": PASSWORD})}),
        ]
        base_url = scenarios[0][1]
        for name, target, options in scenarios:
            wrk(target, seconds=2, **{k: v for k, v in options.items() if k != "connections"},
                connections=options.get("connections", CONNECTIONS))  # warm-up
            beside = None if target == base_url else beside_baseline(base_url)
            results[name] = wrk(target, **options)
            if beside is not None:
                results[name]["baseline_rps"] = beside
            log(f"{name}: {results[name]}")
        unread = f"{api_url}/notifications/unread-count"
        beside = beside_baseline(base_url)
        results["unread count during a login flood"] = during_login_flood(
            api_port, unread, student)
        results["unread count during a login flood"]["baseline_rps"] = beside
        log(f"login flood: {results['unread count during a login flood']}")
        results["_api_worker_rss_mb"] = {"value": rss_mb(api)}
        stop(api)
        processes.remove(api)
        cached = start_gunicorn("app:app", cached_port, api_env(url, 30), logfile)
        processes.append(cached)
        cached_url = f"http://127.0.0.1:{cached_port}/api/v1"
        for name, target in (("public course list (cached)",
                              f"{cached_url}/public/get-courses?per_page=20&difficulty=beginner"),
                             ("public course detail (cached)", f"{cached_url}/public/courses/{course}"),
                             ("search (cached)", f"{cached_url}/public/courses/search?q=python")):
            wrk(target, seconds=2)
            beside = beside_baseline(base_url)
            results[name] = wrk(target)
            results[name]["baseline_rps"] = beside
            log(f"{name}: {results[name]}")
        stop(cached)
        processes.remove(cached)
        # The same authenticated read with no rate limiting: what the limit costs.
        bare_port = free_port()
        bare = start_gunicorn("app:app", bare_port, api_env(url, 0, limits=False), logfile)
        processes.append(bare)
        target = f"http://127.0.0.1:{bare_port}/api/v1/notifications/unread-count"
        wrk(target, headers=student, seconds=2)
        beside = beside_baseline(base_url)
        results["unread count, no rate limiting"] = wrk(target, headers=student)
        results["unread count, no rate limiting"]["baseline_rps"] = beside
        log(f"unprotected: {results['unread count, no rate limiting']}")
        # Last, as it adds 50,000 notifications: one broadcast to every active user, e-mail
        # included (queued as a job).
        results["_broadcast"] = timed_post(
            f"http://127.0.0.1:{bare_port}/api/v1/notifications/broadcast", admin,
            {"title": "Bench broadcast", "message": "To everyone", "send_email": True})
        log(f"broadcast: {results['_broadcast']}")
        stop(bare)
        processes.remove(bare)
        figures = subprocess.run([sys.executable, str(ROOT / "bench" / "inprocess.py"),
                                  str(data["bulk_course_id"])], cwd=ROOT,
                                 env=api_env(url, 0), capture_output=True, text=True,
                                 check=True).stdout
        results["_in_process"] = json.loads(figures.strip().splitlines()[-1])
        log(f"in process: {results['_in_process']}")
    finally:
        for process in processes:
            stop(process)
        logfile.close()
        with root.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        root.dispose()
        shutil.rmtree(UPLOADS, ignore_errors=True)
    baseline = results["baseline: bare Flask JSON"]["rps"]
    table = []
    for name, row in results.items():
        if name.startswith("_"):
            continue
        # To the baseline measured right before this read (the first row is the baseline).
        beside = row.get("baseline_rps", baseline)
        row["ratio"] = round(row["rps"] / beside, 3) if beside else None
        row["target"] = TARGETS.get(name)
        table.append((name, row))
    print()
    print(f"{'read':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x bare':>7}"
          f"  {'target':10} {'met?':7} {'p99/p50':>7} {'<= 2':6}")
    for name, row in table:
        target = row["target"]
        verdict = "" if target is None else ("met" if row["ratio"] >= target else "MISSED")
        tail = row["p99_ms"] / row["p50_ms"] if row["p50_ms"] else 0
        tail_verdict = "" if name not in TARGETS else ("met" if tail <= 2 else "MISSED")
        print(f"{name:36} {row['rps']:>9.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
              f"{row['errors']:>7} {row['ratio']:>7.3f}  "
              f"{'>= ' + str(target) if target else '':10} {verdict:7} {tail:>7.2f} "
              f"{tail_verdict:6}")
    besides = [row["baseline_rps"] for row in results.values()
               if isinstance(row, dict) and "baseline_rps" in row]
    print(f"\nbaseline before each read ({BASELINE_SECONDS} s each): {min(besides):.0f} to "
          f"{max(besides):.0f} req/s; each read's x bare is to the one measured right before it")
    protected = results["notifications unread count"]["ratio"]
    unprotected = results["unread count, no rate limiting"]["ratio"]
    inproc = results["_in_process"]
    print(f"rate-limited authenticated read / the same without limits: "
          f"{protected / unprotected:.2f} (of their x bare)")
    print(f"largest API worker RSS after the run: {results['_api_worker_rss_mb']['value']} MB")
    print(f"broadcast to every user (e-mail queued): {results['_broadcast']['seconds']} s for "
          f"{results['_broadcast']['recipients']} users (HTTP {results['_broadcast']['status']})")
    print(f"certificate PDF: {inproc['certificate_pdf']['median_ms']} ms median, "
          f"{inproc['certificate_pdf']['size_kb']} KB")
    print(f"bulk issuance: {inproc['bulk_issuance']['issued']} certificates in "
          f"{inproc['bulk_issuance']['seconds']} s")
    checks = inproc["password_check"]
    for scheme in ("pbkdf2", "argon2id"):
        print(f"password check ({checks[scheme]['method']}): {checks[scheme]['ms']} ms, "
              f"{checks[scheme]['checks_per_second_per_core']} checks/s per core")
    speedup = checks["argon2id"]["checks_per_second_per_core"] / checks["pbkdf2"][
        "checks_per_second_per_core"]
    print(f"sign-ins per core, Argon2id / PBKDF2 600,000: {speedup:.1f}x (target >= 10: "
          f"{'met' if speedup >= 10 else 'MISSED'})")
    out = ROOT / "bench" / "results" / "latest.json"
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "connections": CONNECTIONS, "seconds": SECONDS,
                               "workers": WORKERS, "dataset": data["counts"],
                               "results": results}, indent=2))
    log(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
