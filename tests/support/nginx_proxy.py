"""The compose deployment's reverse proxy, run here: nginx from Debian's packages (`make nginx`
installs it when missing) with deploy/nginx/lms.conf.template rendered by
deploy/nginx/render-config.sh, exactly as the proxy container renders it at start; only nginx's
main context (pid and temporary files in a directory of the test's own) differs from the
image's deploy/nginx/nginx.conf.

`NginxProxy(directory, upstream="web:5000", resolver_port=...)` listens on 127.0.0.1 at
`http_port` and `https_port` with a self-signed certificate (`ca_file` verifies it) made by
deploy/nginx/self-signed-cert.sh; `access_log()` lists its JSON lines.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_service
from tests.support.gunicorn_server import REPO_ROOT
from tests.support.standins import free_port

DEPLOY = REPO_ROOT / "deploy" / "nginx"
TEMPLATE = DEPLOY / "lms.conf.template"
SYSTEM_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def nginx_binary() -> str:
    return require_service("nginx (Debian's package; `make nginx` installs it)",
                           shutil.which("nginx", path=SYSTEM_PATH))


def require_tools() -> None:
    for tool in ("envsubst", "openssl"):
        require_service(f"{tool} (`make nginx` installs it)", shutil.which(tool))


@dataclass
class NginxProxy:
    directory: Path
    upstream: str
    resolver_port: int
    resolver_valid: str = "1s"
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    _process: subprocess.Popen | None = None

    @property
    def ca_file(self) -> str:
        return str(self.directory / "certs" / "fullchain.pem")

    @property
    def settings(self) -> dict[str, str]:
        """The template's settings, as docker-compose.yml gives them, for this machine."""
        return {
            "NGINX_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "NGINX_HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
            "NGINX_PUBLIC_HTTPS_PORT": str(self.https_port),
            "NGINX_UPSTREAM": self.upstream,
            "NGINX_RESOLVER": f"127.0.0.1:{self.resolver_port}",
            "NGINX_RESOLVER_VALID": self.resolver_valid,
            "NGINX_CERT_DIR": str(self.directory / "certs"),
            "NGINX_CACHE_DIR": str(self.directory / "cache"),
            "NGINX_ACCESS_LOG": str(self.directory / "access.log"),
        }

    def render(self) -> Path:
        env = {"PATH": SYSTEM_PATH, **self.settings}
        subprocess.run([str(DEPLOY / "self-signed-cert.sh"), str(self.directory / "certs")],
                       check=True, capture_output=True, env=env, timeout=30)
        rendered = self.directory / "lms.conf"
        subprocess.run([str(DEPLOY / "render-config.sh"), str(TEMPLATE), str(rendered)],
                       check=True, capture_output=True, env=env, timeout=30)
        temp = self.directory / "temp"
        temp.mkdir(exist_ok=True)
        # Root's workers would run as `nobody`, which cannot enter the test's private temporary
        # directories; the image runs them as www-data in directories of their own.
        user = "user root root;" if os.geteuid() == 0 else ""
        main = self.directory / "nginx.conf"
        main.write_text(f"""
daemon off;
worker_processes 1;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log notice;
{user}
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {rendered};
}}
""")
        return main

    def start(self, timeout: float = 15) -> "NginxProxy":
        binary = nginx_binary()
        require_tools()
        main = self.render()
        check = subprocess.run([binary, "-t", "-p", str(self.directory), "-c", str(main)],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        log = open(self.directory / "nginx.out", "ab")
        self._process = subprocess.Popen([binary, "-p", str(self.directory), "-c", str(main)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self._process.returncode}:\n"
                                   f"{self.error_log()}")
            if all(_accepts(port) for port in (self.http_port, self.https_port)):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout} s:\n{self.error_log()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)  # graceful: what `docker compose stop` sends
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def access_log(self) -> list[dict]:
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
