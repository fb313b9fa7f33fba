"""A real gunicorn running the app in a subprocess, for tests that need several workers.

`GunicornServer(env, workers=2)` starts `gunicorn app:app -c gunicorn.conf.py` from the
repository root on a port the kernel picks, with stdout and stderr in a log file. Every request
goes through `send()` on a new connection with its own X-Request-ID; the app's JSON request log
("lms.request", one line a request, with the worker's "pid") then says which worker answered.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.signing import signing_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT = 10  # seconds, for every request the tests send
_LISTENING_RE = re.compile(r"Listening at: http://[^\s:]+:(\d+)")
_WORKER_RE = re.compile(r"Booting worker with pid: (\d+)")

# What the subprocess inherits from the test process: enough to run Python and reach the
# services, nothing that the app's configuration reads.
# Production refuses to start without the public address its links and QR codes use.
PUBLIC_BASE_URL = "https://lms.example.test"

_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")


def base_env(**settings: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in _PASSTHROUGH if key in os.environ}
    # libpq settings (PGPASSWORD, PGSSLMODE, ...) the test database URL may rely on.
    env.update({key: value for key, value in os.environ.items() if key.startswith("PG")})
    env.update(settings)
    return env


def production_env(database_url: str, redis_url: str | None, **settings: str) -> dict[str, str]:
    """base_env for the production configuration as the server tests run it: fresh secrets,
    JSON request logs at INFO (they name the worker that answered), no forced HTTPS, console
    SMS and mail, no verified phone required to register; Redis for the shared state and the
    rate limits, or none (`redis_url=None`: in-memory limits); PUBLIC_BASE_URL, which
    production requires. `settings` add or override."""
    shared = ({"REDIS_URL": redis_url, "RATE_LIMIT_STORAGE_URL": redis_url} if redis_url
              # empty is unset, and keeps a developer's .env from supplying one
              else {"REDIS_URL": "", "RATE_LIMIT_STORAGE_URL": "memory://"})
    return base_env(**{
        "APP_ENV": "production", "DATABASE_URL": database_url, **shared,
        "SESSION_SECRET": secrets.token_hex(32), "JWT_SECRET_KEY": secrets.token_hex(32),
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "FORCE_HTTPS": "False", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
        "SMS_BACKEND": "console", "MAIL_BACKEND": "console", "OTP_REQUIRED": "False",
        **signing_settings(), **settings})


def run_flask(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m flask --app app <args>` from the repository root; raises on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Answer:
    request_id: str
    status: int
    headers: dict
    body: object
    pid: int | None = None  # the worker that answered, filled in from the request log


@dataclass
class GunicornServer:
    env: dict[str, str]
    log_path: Path
    workers: int = 2
    port: int | None = None  # None: one the kernel picks
    host: str = "127.0.0.1"  # any 127.x address: two servers may then share a port number
    worker_pids: set[int] = field(default_factory=set)
    _process: subprocess.Popen | None = None
    _log_file: object = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self, ready_timeout: float = 30) -> "GunicornServer":
        self._log_file = open(self.log_path, "ab")  # O_APPEND: the workers' lines never overlap
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "app:app", "-c", "gunicorn.conf.py",
             "--workers", str(self.workers), "--bind", f"{self.host}:{self.port or 0}",
             "--no-control-socket"],
            cwd=REPO_ROOT, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_until_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self._process.returncode} before it "
                                   f"was ready:\n{self.log_tail()}")
            text = self.log_text()
            if self.port is None:
                match = _LISTENING_RE.search(text)
                self.port = int(match.group(1)) if match else None
            self.worker_pids = {int(pid) for pid in _WORKER_RE.findall(text)}
            if self.port is not None and len(self.worker_pids) >= self.workers:
                try:
                    response = requests.get(f"{self.base_url}/api/v1/health/ready",
                                            timeout=2, headers={"Connection": "close"},
                                            allow_redirects=False)
                    if response.status_code == 200:
                        return
                    last_error = f"{response.status_code} {response.text[:200]}"
                except requests.RequestException as exc:
                    last_error = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn was not ready within {timeout} s ({last_error}):\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the master stops its workers, then exits
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: master and workers
                process.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- requests ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def send(self, method: str, path: str, *, tag: str = "mw", **kwargs) -> Answer:
        """One request on a connection of its own, so the kernel may hand it to any worker."""
        request_id = f"{tag}-{uuid.uuid4().hex}"
        headers = {"Connection": "close", "X-Request-ID": request_id, **kwargs.pop("headers", {})}
        # requests.request opens a session of its own and closes it: a new connection each time.
        response = requests.request(method, f"{self.base_url}{path}", headers=headers,
                                    timeout=REQUEST_TIMEOUT, allow_redirects=False, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        assert response.headers.get("X-Request-ID") == request_id, response.headers
        return Answer(request_id, response.status_code, dict(response.headers), body)

    def send_many(self, count: int, method: str, path: str, *, concurrency: int = 4,
                  **kwargs) -> list[Answer]:
        """`count` requests, `concurrency` at a time (a busy sync worker leaves the next
        connection to the other), each answer with the pid of the worker that served it."""
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(self.send, method, path, **kwargs) for _ in range(count)]
            answers = [future.result() for future in futures]
        return self.attribute(answers)

    # --- the log ----------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def request_log(self) -> dict[str, dict]:
        """The app's request log lines ("lms.request"), by request id."""
        entries = {}
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "lms.request":
                entries[entry.get("request_id")] = entry
        return entries

    def attribute(self, answers: list[Answer]) -> list[Answer]:
        """Fill in each answer's pid from its request log line (written before the response
        was sent, so it is in the file by now)."""
        entries = self.request_log()
        for answer in answers:
            entry = entries.get(answer.request_id)
            assert entry is not None, (f"no request log line for {answer.request_id}:\n"
                                       f"{self.log_tail()}")
            assert "pid" in entry, f"the request log line has no 'pid' field: {entry}"
            assert entry["status"] == answer.status, entry
            answer.pid = entry["pid"]
        return answers
