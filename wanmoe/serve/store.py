"""The job queue of `wanmoe serve`: the `JobStore` protocol and its embedded default, `SQLiteStore`.

A job record is a plain dict (see `JobStore`); its states are

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled                     (DELETE before a worker took it)
    running -> queued                       (`requeue_running` at start-up after a crash)

Every state change is one SQLite transaction opened with `BEGIN IMMEDIATE`, which takes the
database's write lock before the first read: two workers (threads of one server, or two server
processes on one data dir) can never both see a job as claimable and both take it. The database
runs in WAL mode (readers never wait for the writer) with `synchronous=FULL` (a committed state
change survives a power cut, not only a killed process). Each thread gets its own connection.

Leases: a worker owns a running job until `lease_until`; it extends the lease with `heartbeat`
from a timer thread. A job whose lease ran out (its worker died without `requeue_running`
being called, e.g. on another machine) is claimed again by the next `claim`. A job that was
claimed `MAX_ATTEMPTS` times without ending (it kills its worker each time, e.g. the OOM killer)
fails instead of looping forever.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from wanmoe.errors import WanmoeError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_ATTEMPTS = 3  # claims of one job before it is failed (each one ended with a dead worker)


class QueueFull(Exception):
    """`create` refused a job: the queue already holds `max_queued` queued jobs."""

    def __init__(self, queued: int, max_queued: int) -> None:
        super().__init__(f"the queue is full ({queued} queued jobs, the limit is {max_queued}); "
                         "try again when a job has started")
        self.queued, self.max_queued = queued, max_queued


class QueueUnavailable(WanmoeError):
    """The shared queue's database cannot be reached (HTTP 503; a worker retries later)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text) -> bool:
    """True for exactly 32 lowercase hex characters: the only strings used to name job files."""
    return isinstance(text, str) and ID_RE.fullmatch(text) is not None


def worker_name(label: str) -> str:
    """A worker id unique across machines and processes: host:pid:label."""
    return f"{socket.gethostname()}:{os.getpid()}:{label}"


def _local_worker_alive(worker: str | None) -> bool | None:
    """Whether the process of a worker id on this host still runs; None when it cannot be told
    (another host, or an id not made by `worker_name`)."""
    if not worker:
        return None
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process is starting up: the worker named so is an earlier life
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobStore(Protocol):
    """What the server needs of a job queue (SQLiteStore here; PostgresStore in store_postgres)."""

    def create(self, request: dict, seed: int, *, max_queued: int) -> dict: ...
    def get(self, job_id: str) -> dict | None: ...
    def list(self, *, limit: int = 50, offset: int = 0) -> list[dict]: ...
    def count(self, state: str | None = None) -> int: ...
    def claim(self, worker: str, lease_s: float) -> dict | None: ...
    def heartbeat(self, job_id: str, worker: str, progress: dict | None, lease_s: float) -> bool: ...
    def finish(self, job_id: str, worker: str, state: str, *, error: str | None = None,
               video: str | None = None) -> bool: ...
    def cancel(self, job_id: str) -> dict | None: ...
    def requeue_running(self) -> int: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress TEXT NOT NULL,
    error TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    video TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""
_COLUMNS = ("id", "state", "request", "seed", "created", "started", "finished", "progress", "error",
            "worker", "attempts", "cancel_requested", "video", "lease_until")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


def _record(row) -> dict:
    job = dict(zip(_COLUMNS, row))
    job["request"] = json.loads(job["request"])
    job["progress"] = json.loads(job["progress"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


class SQLiteStore:
    """`JobStore` in one SQLite file (WAL mode, one connection per thread)."""

    def __init__(self, path, *, clock=time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock  # tests pass a fake clock to expire leases without sleeping
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(_SCHEMA)

    # ---- connections -----------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if self._closed:
                raise RuntimeError("the job store is closed")
            # isolation_level=None: no implicit transactions; each change below opens its own
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def _write(self, fn):
        """Run fn(connection) inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error)."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            out = fn(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return out

    def _get(self, con, job_id: str) -> dict | None:
        row = con.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    # ---- the protocol ----------------------------------------------------------------------
    def create(self, request: dict, seed: int, *, max_queued: int) -> dict:
        body = json.dumps(request, sort_keys=True)
        progress = json.dumps({"step": 0, "steps": int(request.get("steps") or 0), "expert": None})

        def tx(con):
            queued = con.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(queued, max_queued)
            job_id = new_job_id()
            con.execute("INSERT INTO jobs (id, state, request, seed, created, progress) "
                        "VALUES (?, 'queued', ?, ?, ?, ?)",
                        (job_id, body, int(seed), self._clock(), progress))
            return self._get(con, job_id)

        return self._write(tx)

    def get(self, job_id: str) -> dict | None:
        if not is_job_id(job_id):
            return None
        return self._get(self._con(), job_id)

    def list(self, *, limit: int = 50, offset: int = 0) -> list[dict]:
        rows = self._con().execute(f"{_SELECT} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                   (int(limit), int(offset))).fetchall()
        return [_record(r) for r in rows]

    def count(self, state: str | None = None) -> int:
        if state is None:
            return self._con().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return self._con().execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]

    def claim(self, worker: str, lease_s: float) -> dict | None:
        def tx(con):
            now = self._clock()
            # expired leases first: the job of a dead worker goes before newer queued ones
            for row in con.execute(f"{_SELECT} WHERE state = 'running' AND lease_until < ? "
                                   "ORDER BY seq", (now,)).fetchall():
                job = _record(row)
                if job["cancel_requested"]:
                    con.execute("UPDATE jobs SET state = 'cancelled', finished = ?, worker = NULL, "
                                "lease_until = NULL WHERE id = ?", (now, job["id"]))
                    continue
                if self._gave_up(con, job, now):
                    continue
                return self._take(con, job["id"], worker, lease_s, now)
            while True:
                row = con.execute("SELECT id, attempts FROM jobs WHERE state = 'queued' "
                                  "ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    return None
                if not self._gave_up(con, {"id": row[0], "attempts": row[1]}, now):
                    return self._take(con, row[0], worker, lease_s, now)

        return self._write(tx)

    @staticmethod
    def _gave_up(con, job: dict, now: float) -> bool:
        if job["attempts"] < MAX_ATTEMPTS:
            return False
        con.execute("UPDATE jobs SET state = 'failed', finished = ?, worker = NULL, "
                    "lease_until = NULL, error = ? WHERE id = ?",
                    (now, f"gave up after {job['attempts']} attempts: the worker running this job "
                          "died each time (out of memory?)", job["id"]))
        return True

    def _take(self, con, job_id: str, worker: str, lease_s: float, now: float) -> dict:
        con.execute("UPDATE jobs SET state = 'running', worker = ?, lease_until = ?, "
                    "started = COALESCE(started, ?), attempts = attempts + 1 WHERE id = ?",
                    (worker, now + lease_s, now, job_id))
        return self._get(con, job_id)

    def heartbeat(self, job_id: str, worker: str, progress: dict | None, lease_s: float) -> bool:
        def tx(con):
            row = con.execute("SELECT cancel_requested FROM jobs WHERE id = ? AND worker = ? "
                              "AND state = 'running'", (job_id, worker)).fetchone()
            if row is None:
                return False  # the job is no longer ours (lease lost and reclaimed, or ended)
            if progress is None:
                con.execute("UPDATE jobs SET lease_until = ? WHERE id = ?",
                            (self._clock() + lease_s, job_id))
            else:
                con.execute("UPDATE jobs SET lease_until = ?, progress = ? WHERE id = ?",
                            (self._clock() + lease_s, json.dumps(progress), job_id))
            return not row[0]

        return self._write(tx)

    def finish(self, job_id: str, worker: str, state: str, *, error: str | None = None,
               video: str | None = None) -> bool:
        if state not in TERMINAL:
            raise ValueError(f"finish state {state!r} is not one of {sorted(TERMINAL)}")

        def tx(con):
            cur = con.execute("UPDATE jobs SET state = ?, finished = ?, error = ?, video = ?, "
                              "lease_until = NULL WHERE id = ? AND worker = ? AND state = 'running'",
                              (state, self._clock(), error, video, job_id, worker))
            return cur.rowcount == 1

        return self._write(tx)

    def cancel(self, job_id: str) -> dict | None:
        if not is_job_id(job_id):
            return None

        def tx(con):
            job = self._get(con, job_id)
            if job is None:
                return None
            if job["state"] == "queued":
                con.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?",
                            (self._clock(), job_id))
            elif job["state"] == "running":
                con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._get(con, job_id)

        return self._write(tx)

    def requeue_running(self) -> int:
        """Start-up of a server after a crash: its running jobs go back to the queue (a running
        job with a cancel request ends cancelled). Jobs of workers in processes of this host that
        still run (a second server on the same data dir) are left to them."""
        def tx(con):
            now, n = self._clock(), 0
            for row in con.execute(f"{_SELECT} WHERE state = 'running'").fetchall():
                job = _record(row)
                if _local_worker_alive(job["worker"]):
                    continue
                if job["cancel_requested"]:
                    con.execute("UPDATE jobs SET state = 'cancelled', finished = ?, worker = NULL, "
                                "lease_until = NULL WHERE id = ?", (now, job["id"]))
                else:
                    con.execute("UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL "
                                "WHERE id = ?", (job["id"],))
                    n += 1
            return n

        return self._write(tx)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for con in self._all:
                try:
                    con.close()
                except sqlite3.ProgrammingError:
                    pass  # made in another thread that is gone; closing it anyway is harmless
            self._all.clear()
        self._local = threading.local()


def open_store(data_dir) -> SQLiteStore:
    """The default store of a data dir: DATA/jobs.sqlite3."""
    return SQLiteStore(Path(data_dir) / "jobs.sqlite3")


__all__ = ["JobStore", "MAX_ATTEMPTS", "QueueFull", "SQLiteStore", "STATES", "TERMINAL",
           "is_job_id", "new_job_id", "open_store", "worker_name"]
