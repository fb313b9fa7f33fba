"""A PostgreSQL server of a test's own: a cluster initdb'd in a temporary directory, listening on
a free port on 127.0.0.1 with trust authentication, for tests that stop and start the database
(a fault test must never touch the server the rest of the suite shares).

    server = PostgresServer.create()      # initdb + start; None binaries -> see `binaries()`
    url = server.url("lms")                # psycopg2 spelling, the database created first
    server.stop()                          # pg_ctl stop -m fast: the server closes every session
    server.start()                         # same data directory, same port
    server.destroy()                       # stop (immediate) and delete the directory

The binaries come from PG_BINDIR, else the newest /usr/lib/postgresql/<version>/bin, else the
directory of `pg_ctl` on PATH. PostgreSQL refuses to run as root: when the test runs as root,
initdb, pg_ctl and so the server run as the `postgres` OS user (subprocess `user=`), in a
directory under the system temporary directory that this user owns. Durability is off (fsync,
synchronous_commit, full_page_writes): a clean stop still writes everything out, which is all
these tests need, and start-up takes a second or two.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.standins import free_port

SERVER_USER = "postgres"  # the OS account the server runs as when the tests run as root


def binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when they are not installed
    (or, running as root, there is no `postgres` account to run them as)."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            if os.geteuid() == 0:
                try:
                    pwd.getpwnam(SERVER_USER)
                except KeyError:
                    return None
            return directory
    return None


@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # holds data/ and server.log
    port: int
    running: bool = False

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, bindir: Path) -> PostgresServer:
        root = Path(tempfile.mkdtemp(prefix="lms-pg-"))
        server = cls(bindir=bindir, root=root, port=free_port())
        try:
            if os.geteuid() == 0:
                account = pwd.getpwnam(SERVER_USER)
                os.chown(root, account.pw_uid, account.pw_gid)
            server._run("initdb", "-D", str(server.data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                        timeout=120)
            with open(server.data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# tests/support/postgres_server.py\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"port = {server.port}\n"
                    "unix_socket_directories = ''\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 16MB\nmax_connections = 40\n"
                    "log_min_messages = warning\n")
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _run(self, program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        user = SERVER_USER if os.geteuid() == 0 else None
        result = subprocess.run([str(self.bindir / program), *args], check=False, cwd=self.root,
                                env=env, user=user, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self.log_tail()}")
        return result

    def start(self, timeout: int = 30) -> None:
        # -l: the server's output goes to the log file, so pg_ctl returns once it is ready.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", str(timeout), "start", timeout=timeout + 10)
        self.running = True

    def stop(self, mode: str = "fast", timeout: int = 30) -> None:
        """`fast`: the server rolls back and disconnects every session, then shuts down
        cleanly; `immediate`: it quits at once (a crash, recovered at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(timeout), "stop",
                  timeout=timeout + 10)
        self.running = False

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- use --------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
