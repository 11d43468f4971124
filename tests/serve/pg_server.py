"""A real PostgreSQL server for the tests: the Debian package's initdb + pg_ctl, in a temp dir.

`postgres_server` (session fixture) starts one server per test session on a free port of
127.0.0.1 (its Unix socket in the same temp dir), with trust authentication for its one
superuser `wanmoe`, and stops and removes it at the end. `postgres_dsn` gives each test a fresh,
empty schema on it (its DSN puts that schema first on the search path). When the binaries are missing and we are root, `apt-get install -y
postgresql` installs them (scripts/install.sh does that too for the test extra). A server must
not run as root: as root, initdb and the server run as the unprivileged `postgres` user (which
the Debian package creates) through `runuser`.

Without a server (no binaries and no way to install them, or no `psycopg` driver) the tests that
need it are skipped with the reason; under CI (`CI` set) they fail instead, so that a CI box that
lost PostgreSQL cannot pass by skipping the scale-out tests.

Also a tiny CLI for the benchmark: `python tests/serve/pg_server.py` starts a server (durable:
fsync on, as in production) and prints its DSN until Ctrl-C.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SUPERUSER = "wanmoe"
_RUN_AS = "postgres"  # the unprivileged user the Debian package creates


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for the scale-out tests: {reason}")


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then the newest /usr/lib/postgresql/N."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def ensure_installed() -> Path:
    """The PostgreSQL bin folder, installing the Debian package first when missing and root."""
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("initdb/pg_ctl not found (install the Debian package: apt-get install -y "
                     "postgresql)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            _unavailable("apt-get install postgresql failed: " + done.stderr.strip()[-300:])
    bindir = find_bindir()
    if bindir is None:
        _unavailable("apt-get installed postgresql but no initdb was found")
    return bindir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; `dsn(db)` for a database on it, `new_database()` for a fresh one."""

    def __init__(self, bindir: Path, *, durable: bool = False):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="wanmoe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = None
        self._as_root = os.geteuid() == 0
        self._names = itertools.count()
        if self._as_root:
            shutil.chown(self.root, _RUN_AS, _RUN_AS)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        settings = ["-c listen_addresses=127.0.0.1", f"-k {self.root}",
                    "-c shared_buffers=32MB", "-c max_connections=100"]
        if not durable:  # the tests check logic, not crash safety: skip the disk flushes
            settings += ["-c fsync=off", "-c synchronous_commit=off",
                         "-c full_page_writes=off"]
        last = None
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            try:
                self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                           "-w", "-t", "60", "-o", " ".join([f"-p {self.port}"] + settings),
                           "start"])
                return
            except RuntimeError as e:
                last = e
        self.remove()
        raise last

    def _run(self, cmd: list[str]) -> None:
        if self._as_root:
            cmd = ["runuser", "-u", _RUN_AS, "--"] + cmd
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text()[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n"
                               f"{done.stderr}\n{log}")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """The DSN of a fresh, empty namespace: a new schema, first on the search path.

        (A schema, not a CREATE DATABASE: each new database copies the template, ~7.5 MB
        written to the WAL, which made the session's shutdown checkpoint take tens of seconds.)
        """
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.dsn()}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            # immediate: no shutdown checkpoint, the files are deleted next anyway
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                       "-w", "stop"])
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_shared: dict = {"server": None, "users": 0}


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole test session (stopped and removed at the end).

    Test modules import this fixture, which gives each module its own session-scoped fixture
    definition: they share one server through `_shared`, and the last one to end stops it.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install -e '.[test]')")
    if _shared["server"] is None:
        _shared["server"] = PostgresServer(ensure_installed())
    _shared["users"] += 1
    try:
        yield _shared["server"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["server"].stop()
            _shared["server"] = None


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """The DSN of a fresh, empty schema (a namespace of its own) for this test."""
    return postgres_server.new_database()


if __name__ == "__main__":
    import time

    server = PostgresServer(ensure_installed(), durable=True)
    print(server.dsn(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
