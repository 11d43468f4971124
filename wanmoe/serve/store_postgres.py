"""The job queue in PostgreSQL: several servers and workers, on several machines, share one queue.

`PostgresStore(dsn)` implements the `JobStore` contract of `wanmoe/serve/store.py` over the same
table layout as the SQLite default. What makes it safe to share:

- **Claim** is one `UPDATE ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED)` statement: the
  row is locked by the claiming transaction and every concurrent claimer skips it, so two
  workers never get the same job and nobody waits on anybody else's row. The order is the
  SQLite store's: a job whose lease ran out first (its worker died; it waited longest), then
  the oldest queued job; a job claimed `MAX_ATTEMPTS` times without ending is failed instead,
  and one whose worker died after a cancel request ends cancelled.
- **Create** serialises on a transaction-scoped advisory lock (one per table) while it counts
  the queued jobs and inserts, so a bounded queue never holds more than `max_queued` jobs, even
  with many servers accepting requests at once. Claims and cancels only ever shrink the count,
  so they do not take that lock.
- **Time** is the database server's clock (`statement_timestamp()`): leases are compared
  against one clock, whatever the clocks of the worker machines say.
- **Leases**: a worker that stops heartbeating (crashed, killed, cut off) loses its job when the
  lease runs out; the next `claim` anywhere takes it over (`attempts` + 1). `requeue_running`
  (called by every server at start-up) only puts back the jobs of worker processes of this
  host that are gone: one server's restart must never take jobs from the live workers of
  another machine, whose state it cannot see; those are left to their leases.

The driver is `psycopg` 3, an optional dependency (`pip install 'wanmoe[postgres]'`), imported
only when a PostgreSQL queue is opened. Connections are pooled inside the store (one per
concurrent caller, a few kept idle), so the HTTP threads and the worker threads of one server
can share one store object.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from wanmoe.errors import InputError, WanmoeError
from wanmoe.serve.store import (MAX_ATTEMPTS, TERMINAL, QueueFull, QueueUnavailable,
                                _local_worker_alive, is_job_id)


__all__ = ["PostgresStore", "QueueFull", "QueueUnavailable", "redact_dsn"]

SCHEMES = ("postgresql://", "postgres://")
COLUMNS = ("id", "state", "request", "seed", "created", "started", "finished", "progress",
           "error", "worker", "attempts", "cancel_requested", "video", "lease_until")
_NOW = "extract(epoch FROM statement_timestamp())::float8"  # the DB server's clock, unix seconds


def _psycopg():
    """The driver, imported on first use so that wanmoe does not need it for SQLite."""
    try:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg.types.json import Json
    except ImportError as e:
        raise InputError("a postgresql:// queue needs the psycopg driver, which is not installed: "
                         "pip install 'wanmoe[postgres]' (psycopg[binary] >= 3.1)") from e
    return psycopg, dict_row, Json


def redact_dsn(dsn: str) -> str:
    """The DSN with any password (user:PASSWORD@ or ?password=) shown as '***'."""
    try:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port
                                                             else "")
            parts = parts._replace(netloc=netloc)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in query):
            query = [(k, "***" if k == "password" else v) for k, v in query]
            parts = parts._replace(query=urlencode(query, safe="*"))
        return urlunsplit(parts)
    except ValueError:
        return "<unparseable DSN>"


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, from a name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)


def _seconds(name: str, value, *, zero: bool) -> float:
    """A lease length: > 0 (claim), or >= 0 (heartbeat; 0 hands the job on at once)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (value >= 0 if zero else value > 0)):
        rule = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return float(value)


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)  # as the SQLite store writes it


class PostgresStore:
    """The JobStore contract over a PostgreSQL table (default name `jobs`)."""

    def __init__(self, dsn: str, *, table: str = "jobs", connect_timeout: float = 10.0,
                 max_connections: int = 16, idle_connections: int = 8):
        """max_connections: calls of this store running at once (more wait for a free one),
        so that many HTTP threads cannot use up the server's `max_connections` (default 100,
        shared by every wanmoe server); idle_connections: how many stay open between calls."""
        if not isinstance(dsn, str) or not dsn.startswith(SCHEMES):
            raise InputError(f"queue {redact_dsn(str(dsn))!r} is not a PostgreSQL URL: use "
                             "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
            raise InputError(f"table name {table!r} must be a lowercase SQL identifier "
                             "(letters, digits, _; at most 63 characters)")
        psycopg, self._dict_row, json_type = _psycopg()
        self._psycopg = psycopg
        self._Json = lambda obj: json_type(obj, dumps=_dumps)
        self.dsn = dsn
        self.table = table
        self._connect_timeout = max(1, int(connect_timeout))
        self._idle: list = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, int(max_connections)))
        self._keep_idle = max(0, int(idle_connections))
        self._closed = False
        self._create_key = _advisory_key(f"wanmoe.serve:{table}:create")
        self._schema()

    # -- connections ----------------------------------------------------------------------------

    def _connect(self):
        try:
            return self._psycopg.connect(self.dsn, autocommit=True, row_factory=self._dict_row,
                                         connect_timeout=self._connect_timeout,
                                         application_name="wanmoe-serve")
        except self._psycopg.OperationalError as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise QueueUnavailable(f"cannot connect to the queue {redact_dsn(self.dsn)}: "
                                   f"{reason}") from e

    def _call(self, work):
        """`work(conn, retry)` on a pooled connection (autocommit; each statement commits).

        A pooled connection can be dead without knowing it (the database restarted, a proxy
        dropped it): when one fails at the connection level, every idle connection is dropped
        and the work runs once more on a new connection, with retry=True. Every operation is
        written so that running it again is harmless (create reuses its id, finish recognises
        its own earlier finish, claim at worst leaves a job that its lease hands on).
        """
        with self._slots:
            return self._call_once_or_twice(work)

    def _call_once_or_twice(self, work):
        for attempt in (0, 1):
            with self._lock:
                if self._closed:
                    raise RuntimeError("the PostgreSQL job store is closed")
                conn = self._idle.pop() if self._idle else None
            pooled = conn is not None
            if conn is None:
                conn = self._connect()
            try:
                return work(conn, attempt > 0)
            except self._psycopg.OperationalError as e:
                if not (conn.broken or conn.closed):
                    raise  # a statement-level error (e.g. a timeout), not a lost connection
                self._drop_idle()
                if attempt == 0 and pooled:
                    continue
                reason = " ".join(str(e).split()) or type(e).__name__
                raise QueueUnavailable(f"lost the connection to the queue "
                                       f"{redact_dsn(self.dsn)}: {reason}") from e
            finally:
                self._release(conn)

    def _release(self, conn) -> None:
        healthy = (not conn.closed and not conn.broken
                   and conn.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE)
        with self._lock:
            keep = healthy and not self._closed and len(self._idle) < self._keep_idle
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _schema(self) -> None:
        t = self.table

        def work(conn, retry):
            with conn.transaction():
                # servers starting at once must not race on CREATE TABLE (pg_type's unique index)
                conn.execute("SELECT pg_advisory_xact_lock(%s)",
                             (_advisory_key(f"wanmoe.serve:{t}:schema"),))
                conn.execute(f"""
                    CREATE TABLE IF NOT EXISTS {t} (
                        seq BIGSERIAL UNIQUE,
                        id TEXT PRIMARY KEY,
                        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                                                             'failed', 'cancelled')),
                        request JSON NOT NULL,
                        seed BIGINT NOT NULL,
                        created DOUBLE PRECISION NOT NULL,
                        started DOUBLE PRECISION,
                        finished DOUBLE PRECISION,
                        progress JSON NOT NULL,
                        error TEXT,
                        worker TEXT,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
                        video TEXT,
                        lease_until DOUBLE PRECISION
                    )""")
                # claim: a running job whose lease ran out, else the oldest queued job; list: seq
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_queued ON {t} (seq) "
                             "WHERE state = 'queued'")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_leases ON {t} (lease_until) "
                             "WHERE state = 'running'")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_state ON {t} (state)")

        self._call(work)

    # -- rows -----------------------------------------------------------------------------------

    @staticmethod
    def _job(row: dict | None) -> dict | None:
        if row is None:
            return None
        return {k: row[k] for k in COLUMNS}

    def _one(self, sql: str, params=()) -> dict | None:
        return self._call(lambda conn, retry: self._job(conn.execute(sql, params).fetchone()))

    # -- the contract ---------------------------------------------------------------------------

    def create(self, request: dict, seed: int, *, max_queued: int) -> dict:
        """Insert a queued job; QueueFull when `max_queued` jobs are queued already (atomic)."""
        job_id = uuid.uuid4().hex
        progress = {"step": 0, "steps": int(request.get("steps") or 0), "expert": None}
        t = self.table

        def work(conn, retry):
            with conn.transaction():
                if retry:  # the first try may have committed before its connection was lost
                    row = conn.execute(f"SELECT * FROM {t} WHERE id = %s", (job_id,)).fetchone()
                    if row is not None:
                        return row
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._create_key,))
                queued = conn.execute(f"SELECT count(*) AS n FROM {t} WHERE state = 'queued'"
                                      ).fetchone()["n"]
                if queued >= max_queued:
                    raise QueueFull(queued, max_queued)
                return conn.execute(
                    f"INSERT INTO {t} (id, state, request, seed, created, progress) "
                    f"VALUES (%s, 'queued', %s, %s, {_NOW}, %s) RETURNING *",
                    (job_id, self._Json(request), int(seed), self._Json(progress))).fetchone()

        return self._job(self._call(work))

    def get(self, job_id: str) -> dict | None:
        if not is_job_id(job_id):
            return None
        return self._one(f"SELECT * FROM {self.table} WHERE id = %s", (job_id,))

    def list(self, *, limit: int = 50, offset: int = 0) -> list[dict]:
        """Jobs newest first (insertion order)."""
        for name, v in (("limit", limit), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        sql = f"SELECT * FROM {self.table} ORDER BY seq DESC LIMIT %s OFFSET %s"
        rows = self._call(lambda conn, retry: conn.execute(sql, (limit, offset)).fetchall())
        return [self._job(r) for r in rows]

    def count(self, state: str | None = None) -> int:
        if state is None:
            sql, params = f"SELECT count(*) AS n FROM {self.table}", ()
        else:
            sql, params = f"SELECT count(*) AS n FROM {self.table} WHERE state = %s", (state,)
        return self._call(lambda conn, retry: conn.execute(sql, params).fetchone()["n"])

    def claim(self, worker: str, lease_s: float) -> dict | None:
        """A running job whose lease ran out (its worker died), else the oldest queued job;
        None when there is neither.

        Before that, jobs that must not run again are settled: an expired one whose cancel was
        requested ends cancelled, and one already claimed MAX_ATTEMPTS times (each time its
        worker died) ends failed. Every step is one statement whose sub-select locks its row
        FOR UPDATE and skips rows that other claimers hold, so claimers never wait on each
        other and never take the same job.
        """
        lease = _seconds("lease_s", lease_s, zero=False)
        t = self.table
        expired = f"state = 'running' AND lease_until < {_NOW}"
        settle = (
            f"UPDATE {t} SET finished = {_NOW}, worker = NULL, lease_until = NULL, "
            "state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END, "
            "error = CASE WHEN cancel_requested THEN error ELSE 'gave up after ' || attempts || "
            "' attempts: the worker running this job died each time (out of memory?)' END "
            f"WHERE id IN (SELECT id FROM {t} WHERE ({expired} AND (cancel_requested "
            "OR attempts >= %(max)s)) OR (state = 'queued' AND attempts >= %(max)s) "
            "FOR UPDATE SKIP LOCKED)")
        take = (f"UPDATE {t} AS j SET state = 'running', worker = %(w)s, "
                f"lease_until = {_NOW} + %(lease)s, started = COALESCE(j.started, {_NOW}), "
                f"attempts = j.attempts + 1 WHERE j.id = (SELECT id FROM {t} WHERE {{which}} "
                "AND attempts < %(max)s ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "RETURNING j.*")
        steps = [take.format(which=f"{expired} AND NOT cancel_requested"),
                 take.format(which="state = 'queued'")]
        params = {"w": worker, "lease": lease, "max": MAX_ATTEMPTS}

        def work(conn, retry):
            conn.execute(settle, params)
            for sql in steps:
                row = conn.execute(sql, params).fetchone()
                if row is not None:
                    return row
            return None

        return self._job(self._call(work))

    def heartbeat(self, job_id: str, worker: str, progress: dict | None, lease_s: float) -> bool:
        """Extend the lease (and store progress) while `worker` owns the running job.

        False when the job was cancelled (cancel_requested) or is no longer this worker's: the
        worker must stop. lease_s=0 ends the lease now (a server shutting down hands the job to
        the next claim, which resumes it from its checkpoint).
        """
        lease = _seconds("lease_s", lease_s, zero=True)
        sql = (f"UPDATE {self.table} SET lease_until = {_NOW} + %s, "
               "progress = COALESCE(%s, progress) "
               "WHERE id = %s AND worker = %s AND state = 'running' RETURNING cancel_requested")
        params = (lease, None if progress is None else self._Json(progress), job_id, worker)
        row = self._call(lambda conn, retry: conn.execute(sql, params).fetchone())
        return row is not None and not row["cancel_requested"]

    def finish(self, job_id: str, worker: str, state: str, *, error: str | None = None,
               video: str | None = None) -> bool:
        """End the running job owned by `worker`; True exactly once per job."""
        if state not in TERMINAL:
            raise ValueError(f"finish state {state!r} is not one of {sorted(TERMINAL)}")
        t = self.table

        def work(conn, retry):
            cur = conn.execute(
                f"UPDATE {t} SET state = %s, finished = {_NOW}, error = %s, video = %s, "
                "lease_until = NULL WHERE id = %s AND worker = %s AND state = 'running'",
                (state, error, video, job_id, worker))
            if cur.rowcount == 1:
                return True
            if retry:  # did the first try, whose answer was lost with its connection, do it?
                row = conn.execute(f"SELECT state, worker, error, video FROM {t} WHERE id = %s",
                                   (job_id,)).fetchone()
                return row is not None and (row["state"], row["worker"], row["error"],
                                            row["video"]) == (state, worker, error, video)
            return False

        return self._call(work)

    def cancel(self, job_id: str) -> dict | None:
        """queued -> cancelled at once; running -> cancel_requested (its worker stops at the
        next heartbeat); a finished job is returned unchanged; None for an unknown id."""
        if not is_job_id(job_id):
            return None
        # One UPDATE: if a claim holds the row, this waits for it and then re-reads the row, so
        # a job claimed meanwhile is seen as running, never cancelled under its worker's feet.
        return self._one(
            f"UPDATE {self.table} SET "
            f"finished = CASE WHEN state = 'queued' THEN {_NOW} ELSE finished END, "
            "cancel_requested = cancel_requested OR state = 'running', "
            "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END "
            "WHERE id = %s RETURNING *", (job_id,))

    def requeue_running(self) -> int:
        """At a server's start-up: the running jobs of worker processes of this host that are
        gone go back to the queue (one with a cancel request ends cancelled); returns how many
        were queued.

        Unlike the SQLite store, jobs of workers on other hosts (or with names not made by
        `store.worker_name`) are left alone: on a shared queue this server cannot tell whether
        they still run, and their leases hand them on if they do not.
        """
        t = self.table

        def work(conn, retry):
            with conn.transaction():
                rows = conn.execute(f"SELECT id, worker FROM {t} WHERE state = 'running' "
                                    "FOR UPDATE SKIP LOCKED").fetchall()
                gone = [r["id"] for r in rows if _local_worker_alive(r["worker"]) is False]
                if not gone:
                    return 0
                conn.execute(f"UPDATE {t} SET state = 'cancelled', finished = {_NOW}, "
                             "worker = NULL, lease_until = NULL "
                             "WHERE id = ANY(%s) AND cancel_requested", (gone,))
                return conn.execute(f"UPDATE {t} SET state = 'queued', worker = NULL, "
                                    "lease_until = NULL WHERE id = ANY(%s) "
                                    "AND NOT cancel_requested", (gone,)).rowcount

        return self._call(work)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
