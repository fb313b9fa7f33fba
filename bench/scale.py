"""`make bench-scale` (or `make bench SCALE=1`): does a read cost the same with ten times the data?

1. Creates two scratch PostgreSQL databases (BENCH_DATABASE_URL's server), applies the
   migrations and seeds each with set-based SQL (generate_series, no ORM): `make bench`'s
   dataset (50,000 users, 1,000 courses with 20,000 lessons, ~100,000 enrollments and payments,
   ~300,000 lesson progress rows, 10,000 certificates, 50,000 notifications, 10,000 audit
   entries) and ten times the learners (500,000 users, ~1,000,000 enrollments and payments,
   ~3,000,000 progress rows, ...; the catalog stays 1,000 courses: it does not grow with them).
2. In process (one Flask app per database in a subprocess, production settings, the Flask test
   client, one request at a time, so the figure is the request's own latency and not the
   machine's queueing): every paginated list an admin or a learner reads, the student and admin
   dashboards and the admin analytics (both computed by each request and as served from their
   Redis copy), the median of BENCH_SCALE_REPEAT requests after warm-up, the two sizes
   interleaved in rounds (other work on a shared machine weighs on both alike); prints the
   ratio with the target (10x within 1.25x of 1x) met / missed.
3. Capacity, on the 10x database: gunicorn as production runs it (4 sync workers), wrk driving a
   page view (an enrolled course's page) and a progress heartbeat; the workers' CPU seconds
   (/proc) divided by the requests served, and their resident memory after the run. Then the
   database alone with pgbench (8 clients): the heartbeat's statements as one transaction (its
   write rate) and the course page's reads.

Results go to bench/results/scale.json. The databases are dropped at the end (BENCH_SCALE_KEEP=1
keeps them, to EXPLAIN ANALYZE a path by hand). Never part of the test suite.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import run as bench  # noqa: E402  (bench/run.py: gunicorn, wrk, the production settings)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

PREFIX = os.environ.get("BENCH_SCALE_DB_PREFIX", "lms_scale")
REPEAT = int(os.environ.get("BENCH_SCALE_REPEAT", "15"))
KEEP = os.environ.get("BENCH_SCALE_KEEP") == "1"
TARGET = 1.25
BASE_USERS = 50_000

# {users}: learners (50,000 at 1x); {certificates}, {audit}: rows of those tables. Courses
# 1..1000 have lessons 20*(c-1)+1 .. 20*c (ids follow insertion order on a fresh database).
SEED = """
INSERT INTO users (email, password_hash, first_name, last_name, role, is_active,
                   is_email_verified, is_phone_verified, failed_login_attempts, created_at,
                   updated_at)
SELECT CASE WHEN n = 1 THEN 'bench-admin@example.com' WHEN n = 2 THEN 'bench-student@example.com'
            ELSE 'user' || n || '@bench.example' END,
       :hash, 'First' || n, 'Last' || n,
       CASE WHEN n = 1 THEN 'admin' WHEN n <= 52 AND n > 2 THEN 'instructor' ELSE 'student' END,
       n % 50 <> 0, true, false, 0, now() - (n || ' seconds')::interval, now()
FROM generate_series(1, {users}) AS n;

""" + bench.CATEGORIES_SEED + """
INSERT INTO courses (title, slug, short_description, description, price, currency, difficulty,
                     learning_outcomes, language, mode_of_conduct, status, subcategory_id,
                     instructor_id, published_at, created_at, updated_at)
SELECT 'Course ' || n, 'bench-course-' || n, 'A course about topic ' || n,
       'Long description of course ' || n, CASE WHEN n % 5 = 0 THEN 0 ELSE (n % 90) + 9.99 END,
       'USD', (ARRAY['beginner','intermediate','advanced'])[1 + n % 3], '["outcome one"]',
       'English', 'ONLINE', CASE WHEN n % 20 = 0 THEN 'draft' ELSE 'published' END,
       1 + (n % 50), 3 + (n % 50), now() - (n || ' hours')::interval,
       now() - (n || ' hours')::interval, now()
FROM generate_series(1, 1000) n;

INSERT INTO modules (course_id, title, position, created_at, updated_at)
SELECT c, 'Module ' || m, m - 1, now(), now()
FROM generate_series(1, 1000) c, generate_series(1, 4) m ORDER BY c, m;

INSERT INTO lessons (module_id, title, content, video_url, duration_minutes, position,
                     is_preview, created_at, updated_at)
SELECT md, 'Lesson ' || l, 'Body of lesson ' || l, 'https://videos.example.com/' || md || '/' || l,
       10, l - 1, l = 1, now(), now()
FROM generate_series(1, 4000) md, generate_series(1, 5) l ORDER BY md, l;

INSERT INTO enrollments (user_id, course_id, status, progress_percent, enrolled_at, started_at,
                         completed_at, created_at, updated_at)
SELECT u, c, CASE WHEN (u + k) % 5 = 0 THEN 'completed' ELSE 'active' END,
       CASE WHEN (u + k) % 5 = 0 THEN 100 ELSE 15 END,
       now() - ((u % 700) || ' days')::interval, now() - ((u % 700) || ' days')::interval,
       CASE WHEN (u + k) % 5 = 0 THEN now() - ((u % 600) || ' days')::interval END, now(), now()
FROM (SELECT u, k, 1 + ((u * (k + 3) + k * 17) % 1000) AS c
      FROM generate_series(2, {users}) u, generate_series(0, 1) k) pairs
ORDER BY u, k
ON CONFLICT DO NOTHING;

INSERT INTO payments (user_id, course_id, gateway, amount, currency, status, refunded_amount,
                      invoice_number, paid_at, created_at, updated_at)
SELECT e.user_id, e.course_id, CASE WHEN e.id % 2 = 0 THEN 'stripe' ELSE 'razorpay' END,
       (e.course_id % 90) + 9.99, 'USD',
       CASE WHEN e.id % 20 = 0 THEN 'refunded' ELSE 'completed' END, 0,
       'INV-BENCH-' || e.id, e.enrolled_at, e.enrolled_at, now()
FROM enrollments e ORDER BY e.id;

INSERT INTO lesson_progress (enrollment_id, lesson_id, completed, completed_at, watch_time_seconds,
                             started_at, last_accessed_at, created_at, updated_at)
SELECT e.id, 20 * (e.course_id - 1) + 1 + k, true, e.enrolled_at, 300, e.enrolled_at,
       e.enrolled_at, e.enrolled_at, now()
FROM enrollments e, generate_series(0, 2) k ORDER BY e.id, k;

INSERT INTO certificates (certificate_number, user_id, course_id, enrollment_id, holder_name,
                          course_title, completion_date, status, issued_at)
SELECT 'AIFA-' || e.course_id || '-' || e.user_id || '-' || upper(substr(md5(e.id::text), 1, 10)),
       e.user_id, e.course_id, e.id, 'Holder ' || e.user_id, 'Course ' || e.course_id,
       (e.completed_at)::date, 'valid', e.completed_at
FROM enrollments e WHERE e.status = 'completed' ORDER BY e.id LIMIT {certificates};

INSERT INTO notifications (user_id, kind, title, message, is_read, created_at)
SELECT CASE WHEN n <= 200 THEN 2 ELSE n END, 'announcement', 'Notice ' || n, 'Message ' || n,
       n % 3 = 0, now() - (n || ' seconds')::interval
FROM generate_series(1, {users}) n;

INSERT INTO audit_logs (actor_id, action, target_type, target_id, created_at)
SELECT 1, 'user.update', 'user', 1 + n % {users}, now() - (n || ' seconds')::interval
FROM generate_series(1, {audit}) n;

INSERT INTO refund_requests (payment_id, user_id, reason, amount, status, created_at, updated_at)
SELECT p.id, p.user_id, 'Bench refund', p.amount, CASE WHEN p.id % 3 = 0 THEN 'pending' ELSE 'rejected' END,
       p.created_at, now()
FROM payments p WHERE p.id % 100 = 7;

INSERT INTO contact_forms (name, email, subject, message, status, created_at, updated_at)
SELECT 'Visitor ' || n, 'visitor' || n || '@bench.example', 'Question ' || n, 'Hello', 'new',
       now() - (n || ' minutes')::interval, now()
FROM generate_series(1, {contacts}) n;
"""


def log(message: str) -> None:
    print(f"[bench-scale] {message}", flush=True)


def server_engine():
    return create_engine(make_url(bench.SERVER), isolation_level="AUTOCOMMIT")


def create_and_seed(scale: int) -> tuple[str, dict]:
    server = make_url(bench.SERVER)
    name = f"{PREFIX}_{scale}x"
    root = server_engine()
    with root.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    root.dispose()
    url = server.set(database=name).render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url, "APP_ENV": "development", "FLASK_APP": "app.py"}
    subprocess.run([sys.executable, "-m", "flask", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    users = BASE_USERS * scale
    sql = SEED.format(users=users, certificates=10_000 * scale, audit=10_000 * scale,
                      contacts=1_000 * scale)
    engine = create_engine(url)
    started = time.perf_counter()
    password_hash = generate_password_hash(bench.PASSWORD, method="pbkdf2:sha256:600000")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(text(statement),
                             {"hash": password_hash} if ":hash" in statement else {})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        counts = {table: conn.scalar(text(f"SELECT count(*) FROM {table}")) for table in
                  ("users", "enrollments", "payments", "lesson_progress", "certificates",
                   "notifications", "audit_logs")}
        size = conn.scalar(text("SELECT pg_database_size(current_database())"))
    engine.dispose()
    seconds = round(time.perf_counter() - started, 1)
    log(f"{name}: seeded in {seconds}s, {size / 2**20:.0f} MB: {counts}")
    return url, {"counts": counts, "seed_seconds": seconds, "size_mb": round(size / 2**20)}


# What is measured: (name, path, who). Course 1's enrollments grow with the learners.
PATHS = [
    ("admin: users", "/admin/users?per_page=20", "admin"),
    ("admin: users, students, active", "/admin/users?role=student&is_active=true", "admin"),
    ("admin: users, page 50", "/admin/users?page=50&per_page=20", "admin"),
    ("admin: payments (+ totals)", "/admin/payments?per_page=20", "admin"),
    ("admin: payments, refunded", "/admin/payments?status=refunded", "admin"),
    ("admin: courses", "/admin/courses?per_page=20", "admin"),
    ("admin: refund requests", "/admin/refund-requests", "admin"),
    ("admin: audit log", "/admin/audit-log", "admin"),
    ("admin: certificates", "/certificates", "admin"),
    ("admin: contact forms", "/contact/contact-forms", "admin"),
    ("admin: a course's enrollments", "/courses/1/enrollments", "admin"),
    ("admin dashboard (computed)", "/admin/dashboard", "admin"),
    ("admin analytics (computed)", "/admin/analytics", "admin"),
    ("admin dashboard (as served)", "/admin/dashboard", "admin"),
    ("admin analytics (as served)", "/admin/analytics", "admin"),
    ("student dashboard", "/users/dashboard", "student"),
    ("student: enrolled courses", "/users/enrolled-courses", "student"),
    ("student: enrollments", "/enrollments", "student"),
    ("student: certificates", "/users/certificates", "student"),
    ("student: notifications", "/notifications", "student"),
    ("student: payment history", "/payments/history", "student"),
]


# The measuring process: one app on one database, answering {"name", "path", "who", "n"} lines
# with the n requests' latencies in ms (after its own warm-up of each path).
MEASURER = """
import json, sys, time
import redis
from app import app
shared = redis.Redis.from_url(app.config['REDIS_URL'])
client = app.test_client()
def token(email):
    r = client.post('/api/v1/auth/login', json={'email': email, 'password': sys.argv[1]})
    assert r.status_code == 200, r.get_data(as_text=True)
    return {'Authorization': 'Bearer ' + r.get_json()['access_token']}
who = {'admin': token('bench-admin@example.com'), 'student': token('bench-student@example.com')}
print('ready', flush=True)
for line in sys.stdin:
    ask = json.loads(line)
    times = []
    for _ in range(ask['n']):
        if 'computed' in ask['name']:
            for key in shared.scan_iter('lms:admin-figures:*'):
                shared.delete(key)
        started = time.perf_counter()
        r = client.get('/api/v1' + ask['path'], headers=who[ask['who']])
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, (ask['path'], r.status_code, r.get_data(as_text=True))
    body = r.get_json()
    page = body.get('pagination') if isinstance(body, dict) else None
    print(json.dumps({'times': times, 'total': page.get('total') if page else None,
                      'estimated': bool(page and page.get('total_is_estimate'))}), flush=True)
"""


class Measurer:
    """A subprocess serving one database in process (production settings, the Flask test
    client). The admin figures "(computed)" are computed by every request (their Redis copy
    deleted before it); "(as served)" is what the admin SPA sees (ADMIN_STATS_CACHE_SECONDS=30,
    so after the first request, Redis)."""

    def __init__(self, url: str, redis_db: int) -> None:
        redis_url = bench.REDIS.rsplit("/", 1)[0] + f"/{redis_db}"
        subprocess.run(["redis-cli", "-u", redis_url, "flushdb"], capture_output=True)
        env = {**bench.api_env(url, 0), "ADMIN_STATS_CACHE_SECONDS": "30",
               "REDIS_URL": redis_url, "RATE_LIMIT_STORAGE_URL": redis_url,
               "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-c", MEASURER, bench.PASSWORD],
                                        cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the measuring app did not start")

    def ask(self, name: str, path: str, who: str, n: int) -> dict:
        self.process.stdin.write(json.dumps({"name": name, "path": path, "who": who,
                                             "n": n}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring app stopped at {path}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def measure(urls: dict[int, str]) -> dict[int, dict]:
    """Every path at both sizes, interleaved (a few requests at 1x, as many at 10x, and again)
    so that the other work on a shared machine weighs on both alike; the median of each."""
    measurers = {scale: Measurer(url, 13 + i) for i, (scale, url) in enumerate(urls.items())}
    out: dict[int, dict] = {scale: {} for scale in urls}
    rounds, per_round = 3, max(1, REPEAT // 3)
    try:
        for name, path, who in PATHS:
            times: dict[int, list[float]] = {scale: [] for scale in urls}
            for scale, measurer in measurers.items():
                measurer.ask(name, path, who, 2)  # warm-up
            for _ in range(rounds):
                for scale, measurer in measurers.items():
                    answer = measurer.ask(name, path, who, per_round)
                    times[scale] += answer["times"]
            for scale in urls:
                out[scale][name] = {"ms": round(statistics.median(times[scale]), 2),
                                    "total": answer["total"] if scale == max(urls) else None,
                                    "estimated": answer["estimated"]}
            for scale in urls:  # totals: each size's own
                out[scale][name]["total"] = measurers[scale].ask(name, path, who, 1)["total"] \
                    if "computed" not in name else None
            log(f"{name}: " + ", ".join(f"{s}x {out[s][name]['ms']} ms" for s in urls))
    finally:
        for measurer in measurers.values():
            measurer.close()
    return out


def cpu_seconds(master) -> float:
    """User + system CPU seconds of the master's workers so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True,
                              text=True).stdout.split()
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def wrk_requests(url: str, **options) -> dict:
    """bench.wrk's figures plus the number of requests it completed."""
    result = bench.wrk(url, **options)
    result["requests"] = round(result["rps"] * options.get("seconds", bench.SECONDS))
    return result


def capacity(url: str) -> dict:
    """CPU per request of a page view and of a heartbeat under wrk, the workers' memory after,
    and the database's heartbeat write rate with pgbench."""
    engine = create_engine(url)
    with engine.connect() as conn:
        course, enrollment, lesson = conn.execute(text(
            "SELECT e.course_id, e.id, 20 * (e.course_id - 1) + 5 FROM enrollments e "
            "WHERE e.user_id = 2 ORDER BY e.id LIMIT 1")).one()
        enrollments = conn.scalar(text("SELECT max(id) FROM enrollments"))
        progress_rows = conn.scalar(text("SELECT max(id) FROM lesson_progress"))
    engine.dispose()
    subprocess.run(["redis-cli", "-u", bench.REDIS, "flushdb"], capture_output=True)
    logfile = open(ROOT / "bench" / "results" / "gunicorn-scale.log", "w")
    port = bench.free_port()
    api = bench.start_gunicorn("app:app", port, bench.api_env(url, 0), logfile)
    out: dict = {"workers": int(bench.WORKERS)}
    try:
        headers = {"Authorization": f"Bearer {bench.login(port, 'bench-student@example.com')}"}
        base = f"http://127.0.0.1:{port}/api/v1"
        scenarios = {
            "page view (enrolled course page)": (f"{base}/courses/{course}", {}),
            "progress heartbeat": (
                f"{base}/enrollments/get-enrollments/{course}/lessons/{lesson}/progress",
                {"method": "POST", "body": json.dumps({"watch_time_seconds": 30})}),
        }
        for name, (target, options) in scenarios.items():
            bench.wrk(target, headers=headers, seconds=2, **options)  # warm-up
            before = cpu_seconds(api)
            result = wrk_requests(target, headers=headers, **options)
            used = cpu_seconds(api) - before
            result["cpu_ms_per_request"] = round(used * 1000 / max(result["requests"], 1), 2)
            out[name] = result
            log(f"{name}: {result}")
        out["worker_rss_mb_after"] = bench.rss_mb(api)
        log(f"largest worker RSS after the load: {out['worker_rss_mb_after']} MB")
    finally:
        bench.stop(api)
        logfile.close()
    out["pgbench"] = pgbench(url, enrollments, progress_rows)
    out["redis"] = redis_rate()
    return out


def redis_rate() -> dict:
    """Redis alone: MGET of 3 keys (a request's one read of shared state) per second,
    redis-benchmark with 32 clients, no pipelining."""
    if not shutil.which("redis-benchmark"):
        return {}
    target = urlsplit(bench.REDIS)
    done = subprocess.run(["redis-benchmark", "-h", target.hostname or "127.0.0.1", "-p",
                           str(target.port or 6379), "-c", "32", "-n", "200000", "-q",
                           "MGET", "k1", "k2", "k3"], capture_output=True, text=True)
    rate = re.search(r"([\d.]+) requests per second", done.stdout)
    out = {"mget_per_s": round(float(rate.group(1))) if rate else None}
    log(f"redis: {out}")
    return out


def size(kb: float) -> str:
    return f"{kb / 1024:,.0f} MB" if kb < 2**20 else f"{kb / 2**20:,.1f} GB"


LEARNERS = (10_000, 100_000, 1_000_000)
PAGE_EVERY, HEARTBEAT_EVERY, UTILISATION = 20, 30, 0.7


def capacity_table(load: dict, datasets: dict) -> list[str]:
    """The README's capacity table from this run's figures (the model: each active learner
    views a page every 20 s and sends a heartbeat every 30 s; cores planned at 70 %)."""
    cpu_page = load["page view (enrolled course page)"]["cpu_ms_per_request"]
    cpu_beat = load["progress heartbeat"]["cpu_ms_per_request"]
    pg = load["pgbench"]
    small, large = datasets[1], datasets[10]
    per_learner_kb = (large["size_mb"] - small["size_mb"]) * 1024 / (
        large["counts"]["users"] - small["counts"]["users"])
    lines = ["| active learners | requests/s (pages + heartbeats) | web cores | sync workers "
             "(2/core) | worker memory | heartbeat commits/s on the primary | page reads/s | "
             "database size |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in LEARNERS:
        pages, beats = n / PAGE_EVERY, n / HEARTBEAT_EVERY
        cores = -(-(pages * cpu_page + beats * cpu_beat) / 1000 // UTILISATION)
        workers = int(cores * 2)
        memory_gb = workers * load["worker_rss_mb_after"] / 1024
        lines.append(
            f"| {n:,} | {pages + beats:,.0f} | {cores:,.0f} | {workers:,} | {memory_gb:,.0f} GB "
            f"| {beats:,.0f} ({beats / pg['heartbeat']['tps']:.1f}x this machine's) "
            f"| {pages:,.0f} ({pages / pg['page_reads']['tps']:.1f}x) "
            f"| {size(n * per_learner_kb)} |")
    return lines


# The database's side of the two requests of the capacity model, as pgbench transactions on a
# random learner's enrollment (the statements the app sends, by the same indexes): a progress
# heartbeat (its reads, two UPDATEs, a commit) and an enrolled course page (its reads).
HEARTBEAT_SQL = """\\set e random(1, {enrollments})
BEGIN;
SELECT id, user_id, course_id, status, progress_percent FROM enrollments WHERE id = :e;
SELECT id, completed, watch_time_seconds FROM lesson_progress WHERE enrollment_id = :e
  ORDER BY lesson_id LIMIT 1;
UPDATE enrollments SET last_accessed_at = now(), updated_at = now() WHERE id = :e;
UPDATE lesson_progress SET watch_time_seconds = watch_time_seconds + 30,
  last_accessed_at = now(), updated_at = now()
  WHERE id = (SELECT min(id) FROM lesson_progress WHERE enrollment_id = :e);
SELECT count(*) FROM modules JOIN lessons ON lessons.module_id = modules.id
  WHERE modules.course_id = (SELECT course_id FROM enrollments WHERE id = :e);
SELECT count(*) FROM lesson_progress WHERE enrollment_id = :e AND completed;
COMMIT;
"""
PAGE_SQL = """\\set e random(1, {enrollments})
SELECT user_id, course_id FROM enrollments WHERE id = :e;
SELECT * FROM users WHERE id = (SELECT user_id FROM enrollments WHERE id = :e);
SELECT * FROM courses WHERE id = (SELECT course_id FROM enrollments WHERE id = :e);
SELECT * FROM modules WHERE course_id = (SELECT course_id FROM enrollments WHERE id = :e)
  ORDER BY position, id;
SELECT l.* FROM lessons l JOIN modules m ON m.id = l.module_id
  WHERE m.course_id = (SELECT course_id FROM enrollments WHERE id = :e);
SELECT lesson_id FROM lesson_progress WHERE enrollment_id = :e AND completed;
"""

# Past the primary's heartbeat rate: heartbeats gathered (in Redis) and written 100 rows to a
# statement, one commit.
BATCH_SQL = """\\set a random(1, {progress_rows} - 100)
UPDATE lesson_progress SET watch_time_seconds = watch_time_seconds + 30,
  last_accessed_at = now(), updated_at = now() WHERE id BETWEEN :a AND :a + 99;
"""


def pgbench(url: str, enrollments: int, progress_rows: int) -> dict:
    """Transactions per second for each script, 8 clients for 10 s, the server's default
    (synchronous) commit."""
    target = make_url(url)
    env = {**os.environ, "PGPASSWORD": target.password or ""}
    out = {"clients": 8, "seconds": 10}
    for name, sql in (("heartbeat", HEARTBEAT_SQL), ("page_reads", PAGE_SQL),
                      ("heartbeats_batched_100", BATCH_SQL)):
        script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
        script.write(sql.format(enrollments=enrollments, progress_rows=progress_rows))
        script.close()
        command = ["pgbench", "-n", "-c", "8", "-j", "2", "-T", "10", "-f", script.name,
                   "-h", target.host or "127.0.0.1", "-p", str(target.port or 5432),
                   "-U", target.username or "postgres", target.database]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        os.unlink(script.name)
        tps = re.search(r"tps = ([\d.]+)", done.stdout)
        latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
        if not tps:
            raise RuntimeError(done.stderr[-2000:])
        out[name] = {"tps": round(float(tps.group(1)), 1),
                     "latency_ms": float(latency.group(1)) if latency else None}
    log(f"pgbench: {out}")
    return out


def capacity_again() -> int:
    """`bench/scale.py capacity`: step 3 alone on the databases a BENCH_SCALE_KEEP=1 run kept."""
    server = make_url(bench.SERVER)
    urls, datasets = {}, {}
    for scale in (1, 10):
        urls[scale] = server.set(database=f"{PREFIX}_{scale}x").render_as_string(
            hide_password=False)
        engine = create_engine(urls[scale])
        with engine.connect() as conn:
            datasets[scale] = {
                "counts": {"users": conn.scalar(text("SELECT count(*) FROM users"))},
                "size_mb": round(conn.scalar(text(
                    "SELECT pg_database_size(current_database())")) / 2**20)}
        engine.dispose()
    load = capacity(urls[10])
    print("\n".join(capacity_table(load, datasets)))
    print(f"load average: {os.getloadavg()}")
    previous = ROOT / "bench" / "results" / "scale.json"
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    kept["capacity"], kept["capacity_load_average"] = load, os.getloadavg()
    kept["capacity_when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    previous.write_text(json.dumps(kept, indent=2))
    shutil.rmtree(bench.UPLOADS, ignore_errors=True)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["seed"]:  # `bench/scale.py seed 10`: one database, kept, to EXPLAIN
        create_and_seed(int(sys.argv[2]))
        shutil.rmtree(bench.UPLOADS, ignore_errors=True)
        return 0
    if sys.argv[1:2] == ["capacity"]:  # the capacity figures again, on kept databases
        return capacity_again()
    if not shutil.which("wrk") or not shutil.which("pgbench"):
        print("wrk and pgbench are needed (Debian: apt-get install wrk postgresql-client)",
              file=sys.stderr)
        return 1
    datasets: dict[int, dict] = {}
    urls: dict[int, str] = {}
    try:
        for scale in (1, 10):
            urls[scale], datasets[scale] = create_and_seed(scale)
        latencies = measure(urls)
        load = capacity(urls[10])
    finally:
        if not KEEP:
            root = server_engine()
            with root.connect() as conn:
                for scale in urls:
                    conn.execute(text(
                        f'DROP DATABASE IF EXISTS "{make_url(urls[scale]).database}" WITH (FORCE)'))
            root.dispose()
        shutil.rmtree(bench.UPLOADS, ignore_errors=True)
    rows = []
    print()
    print(f"{'path':36} {'1x ms':>8} {'10x ms':>8} {'ratio':>6}  {'total 10x':>10}  target")
    for name, _path, _who in PATHS:
        small, large = latencies[1][name], latencies[10][name]
        ratio = round(large["ms"] / small["ms"], 2) if small["ms"] else None
        met = ratio is not None and ratio <= TARGET
        total = "" if large["total"] is None else (
            f"~{large['total']}" if large["estimated"] else str(large["total"]))
        rows.append({"path": name, "ms_1x": small["ms"], "ms_10x": large["ms"], "ratio": ratio,
                     "total_10x": large["total"], "estimated_10x": large["estimated"],
                     "met": met})
        print(f"{name:36} {small['ms']:>8.2f} {large['ms']:>8.2f} {ratio:>6.2f}  {total:>10}  "
              f"<= {TARGET}x {'met' if met else 'MISSED'}")
    print()
    for name in ("page view (enrolled course page)", "progress heartbeat"):
        row = load[name]
        print(f"{name}: {row['rps']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"{row['errors']} errors, {row['cpu_ms_per_request']} ms worker CPU per request")
    print(f"largest worker RSS after the load: {load['worker_rss_mb_after']} MB (target < 200 MB: "
          f"{'met' if load['worker_rss_mb_after'] < 200 else 'MISSED'})")
    pg = load["pgbench"]
    for name in ("heartbeat", "page_reads", "heartbeats_batched_100"):
        print(f"PostgreSQL alone, a {name.replace('_', ' ')} transaction (pgbench, "
              f"{pg['clients']} clients): {pg[name]['tps']}/s, {pg[name]['latency_ms']} ms average")
    if load.get("redis"):
        print(f"Redis alone, MGET of 3 keys (32 clients): {load['redis']['mget_per_s']}/s")
    print()
    print("\n".join(capacity_table(load, datasets)))
    print(f"\nload average: {os.getloadavg()}")
    out = ROOT / "bench" / "results" / "scale.json"
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeat": REPEAT,
        "datasets": {f"{k}x": v for k, v in datasets.items()}, "paths": rows,
        "capacity": load, "load_average": os.getloadavg()}, indent=2))
    log(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
