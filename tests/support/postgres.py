"""A real PostgreSQL server for tests: Debian's binaries, a temp cluster, loopback only.

``postgres_server`` (session) runs ``initdb`` + ``pg_ctl start`` from
``/usr/lib/postgresql/*/bin`` on a free 127.0.0.1 port. PostgreSQL refuses to run as root, so
when the tests run as root the cluster belongs to the ``postgres`` system user (or
``nobody``) and the commands run through ``runuser``. ``postgres_url`` (function scope) gives
each test a fresh, empty database. ``restart(down=5)`` cuts every connection and brings the
server back on the same port (fault tests). Everything is stopped and removed at the end; without the
binaries the tests are skipped with the reason.

    from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_counter = itertools.count(1)


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` that has initdb, pg_ctl and postgres."""
    cands = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if all((p / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            try:
                cands.append((int(p.parent.name.split(".")[0]), p))
            except ValueError:
                cands.append((0, p))
    return max(cands)[1] if cands else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_user() -> str | None:
    """The unprivileged user to run postgres as (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class PostgresServer:
    """A running cluster; ``url(db)`` is a SQLAlchemy URL for psycopg 3."""

    bin_dir: Path
    base: Path
    port: int
    user: str | None
    superuser: str = "easeml"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def _cmd(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else args

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(args), cwd=self.base, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self) -> None:
        r = self.run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust",
                      "-U", self.superuser, "-E", "UTF8", "--no-sync", "--locale=C"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        self._pg_start()

    def _pg_start(self) -> None:
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        r = self.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                      str(self.base / "postgres.log"), "-o", opts, "-w", "-t", "60", "start"], timeout=90)
        if r.returncode != 0:
            log = (self.base / "postgres.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {tail}")

    def restart(self, down: float = 0.0, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``: every client connection is cut), stay down
        ``down`` seconds (clients are refused), start it again on the same port and data."""
        import time

        r = self.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30",
                      "stop"], timeout=40)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {r.stderr.strip() or r.stdout.strip()}")
        time.sleep(down)
        self._pg_start()

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop this server (immediate mode; SIGKILL if it lingers) and delete its files."""
        pid = self._postmaster_pid()
        try:
            if self.data_dir.exists():
                self.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                          "-w", "-t", "20", "stop"], timeout=30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)  # our own postmaster, if pg_ctl could not stop it
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.superuser,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _base_dir() -> str:
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= (2 << 30) and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


def start_postgres() -> PostgresServer:
    """Start a throw-away cluster (caller must ``stop()`` it). Raises if binaries are missing."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin")
    user = _run_user()
    # tmpfs when roomy (fast, and nothing to delete from disk), else /tmp; both are
    # traversable by the unprivileged server user, whatever $TMPDIR says
    base = Path(tempfile.mkdtemp(prefix="easeml-pg-", dir=_base_dir()))
    os.chmod(base, 0o700)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(bin_dir=bin_dir, base=base, port=_free_port(), user=user)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session (skips if the server is not installed)."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
                    "(scripts/setup.sh installs Debian's 'postgresql')")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root but 'runuser' is missing: cannot start postgres unprivileged")
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server, as a SQLAlchemy URL."""
    return postgres_server.create_database()
