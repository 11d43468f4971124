"""What only the PostgreSQL store has: DSNs, the optional driver, its schema, lost connections.

The JobStore contract itself (both stores) is tested in test_store_contract.py. These tests use a
real server too (tests/serve/pg_server.py).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from wanmoe.errors import InputError, WanmoeError
from wanmoe.serve.stores import open_store

from .pg_server import (PostgresServer, ensure_installed, free_port,  # noqa: F401 (fixtures)
                        postgres_dsn, postgres_server)

LONG = 600.0


def psycopg():
    import psycopg

    return psycopg


def sql(dsn, query, params=()):
    with psycopg().connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_open_store_picks_postgres_for_both_url_schemes(postgres_dsn):
    from wanmoe.serve.store_postgres import PostgresStore

    for dsn in (postgres_dsn, "postgres://" + postgres_dsn[len("postgresql://"):]):
        store = open_store(dsn, "/nonexistent-data-dir")
        try:
            assert isinstance(store, PostgresStore)
            assert store.count() == 0
        finally:
            store.close()


@pytest.mark.parametrize("spec", ["mysql://u@h/db", "redis://localhost:6379", "postgresql:/x",
                                  "jobs.sqlite3", "sqlite:"])
def test_open_store_refuses_other_specs_in_one_line(spec):
    with pytest.raises(InputError) as e:
        open_store(spec, "/tmp")
    msg = str(e.value)
    assert "\n" not in msg and "--queue" in msg


def test_a_password_never_appears_in_an_error():
    from wanmoe.serve.store_postgres import PostgresStore, QueueUnavailable, redact_dsn

    with pytest.raises(InputError) as e:  # not a postgres scheme: refused before any connection
        open_store("postgresq://bob:hunter2@db.example:5432/jobs", "/tmp")
    assert "hunter2" not in str(e.value) and "bob:***@db.example:5432" in str(e.value)
    port = free_port()  # nothing listens there
    with pytest.raises(QueueUnavailable) as e:
        PostgresStore(f"postgresql://bob:hunter2@127.0.0.1:{port}/jobs", connect_timeout=2)
    msg = str(e.value)
    assert isinstance(e.value, WanmoeError)  # the CLI prints it as one line, exit status 2
    assert "hunter2" not in msg and "\n" not in msg and f"127.0.0.1:{port}" in msg
    assert redact_dsn("postgresql://u@h:1/d") == "postgresql://u@h:1/d"
    assert redact_dsn("postgresql://u:p@[::1]:5/d") == "postgresql://u:***@[::1]:5/d"
    assert redact_dsn("postgresql://u@h/d?password=hunter2&sslmode=require") \
        == "postgresql://u@h/d?password=***&sslmode=require"


def test_a_missing_driver_names_the_extra(monkeypatch):
    from wanmoe.serve.store_postgres import PostgresStore

    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(InputError, match=r"wanmoe\[postgres\]") as e:
        PostgresStore("postgresql://u@127.0.0.1:1/db")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"wanmoe\[postgres\]"):
        open_store("postgresql://u@127.0.0.1:1/db", "/tmp")


@pytest.mark.parametrize("table", ["Jobs", "jobs; DROP TABLE x", "1jobs", "", "a" * 64])
def test_table_names_must_be_plain_identifiers(table):
    from wanmoe.serve.store_postgres import PostgresStore

    with pytest.raises(InputError):
        PostgresStore("postgresql://u@127.0.0.1:1/db", table=table)


def test_servers_starting_at_once_create_the_schema_once(postgres_dsn):
    from wanmoe.serve.store_postgres import PostgresStore

    n = 6
    barrier, stores, errors = threading.Barrier(n), [], []

    def start():
        try:
            barrier.wait()
            stores.append(PostgresStore(postgres_dsn))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(stores) == n
        indexes = {r[0] for r in sql(postgres_dsn, "SELECT indexname FROM pg_indexes WHERE "
                                     "tablename = 'jobs' AND schemaname = current_schema()")}
        assert {"jobs_queued", "jobs_leases", "jobs_state"} <= indexes
        job = stores[0].create({"prompt": "x"}, 1, max_queued=1)
        assert all(s.get(job["id"]) == job for s in stores)
    finally:
        for s in stores:
            s.close()


def test_two_tables_in_one_database_are_two_queues(postgres_dsn):
    from wanmoe.serve.store_postgres import PostgresStore

    with PostgresStore(postgres_dsn, table="queue_a") as a, \
            PostgresStore(postgres_dsn, table="queue_b") as b:
        job = a.create({"prompt": "x"}, 1, max_queued=1)
        b.create({"prompt": "y"}, 2, max_queued=1)  # a's full queue does not count here
        assert b.get(job["id"]) is None and b.count() == 1 and a.count() == 1
        assert b.claim("w", LONG)["request"] == {"prompt": "y"}
        assert a.count("queued") == 1


def test_times_come_from_the_database_clock(postgres_dsn):
    from wanmoe.serve.store_postgres import PostgresStore

    clock = "SELECT extract(epoch FROM clock_timestamp())::float8"
    with PostgresStore(postgres_dsn) as store:
        (t0,), = sql(postgres_dsn, clock)
        job = store.create({"prompt": "x"}, 1, max_queued=1)
        got = store.claim("w", 100.0)
        (t1,), = sql(postgres_dsn, clock)
    assert t0 <= job["created"] <= got["started"] <= t1
    assert got["lease_until"] == pytest.approx(got["started"] + 100.0, abs=1e-6)


@pytest.mark.parametrize("lease", [0, -1, float("nan"), "5", True])
def test_claim_refuses_a_lease_that_is_not_positive(postgres_dsn, lease):
    from wanmoe.serve.store_postgres import PostgresStore

    with PostgresStore(postgres_dsn) as store:
        job = store.create({"prompt": "x"}, 1, max_queued=1)
        with pytest.raises(ValueError):
            store.claim("w", lease)
        assert store.get(job["id"])["state"] == "queued"
        if lease != 0:
            store.claim("w", LONG)
            with pytest.raises(ValueError):
                store.heartbeat(job["id"], "w", None, lease)


def test_requeue_running_leaves_jobs_of_other_hosts_to_their_leases(postgres_dsn):
    """A server restarting on machine A must not take the running jobs of machine B."""
    from wanmoe.serve.store_postgres import PostgresStore

    with PostgresStore(postgres_dsn) as store:
        for i in range(3):
            store.create({"prompt": str(i)}, i, max_queued=5)
        other = store.claim("gpu-box-b:4242:0-cuda:0", 0.3)
        legacy = store.claim("w-without-a-host", 0.3)  # not a store.worker_name id
        assert store.requeue_running() == 0
        assert store.get(other["id"])["state"] == "running"
        assert store.get(legacy["id"])["state"] == "running"
        time.sleep(0.5)  # their workers are gone: the leases run out and hand the jobs on
        got = {store.claim("w2", LONG)["id"] for _ in range(2)}
        assert got == {other["id"], legacy["id"]}


def test_one_store_opens_at_most_max_connections(postgres_dsn):
    from wanmoe.serve.store_postgres import PostgresStore

    n_threads, n_jobs = 6, 60
    with PostgresStore(postgres_dsn, max_connections=2) as store:
        for i in range(n_jobs):
            store.create({"prompt": str(i)}, i, max_queued=n_jobs)
        got, barrier = [], threading.Barrier(n_threads)

        def work():
            barrier.wait()
            while (job := store.claim("w", LONG)) is not None:
                got.append(job["id"])

        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == len(set(got)) == n_jobs
        # every connection it ever opened is still open (idle), so this counts them all
        (opened,), = sql(postgres_dsn, "SELECT count(*) FROM pg_stat_activity "
                                       "WHERE application_name = 'wanmoe-serve'")
        assert 1 <= opened <= 2


def _kill_connections(dsn):
    """Terminate the store's server-side sessions: its pooled connections are now dead."""
    killed = sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'wanmoe-serve' AND datname = current_database()")
    assert killed and all(ok for (ok,) in killed)


def test_every_call_survives_pooled_connections_that_died(postgres_dsn):
    """A database restart (or a proxy dropping idle connections) kills the pooled connections;
    the next call of every method still works (it retries once on a new connection)."""
    from wanmoe.serve.store_postgres import PostgresStore

    with PostgresStore(postgres_dsn) as store:
        ids = [store.create({"prompt": str(i)}, i, max_queued=10)["id"] for i in range(3)]
        dead = f"{socket.gethostname()}:{os.getpid()}:0"  # an earlier life of this process
        calls = [
            ("create", lambda: store.create({"prompt": "new"}, 9, max_queued=10)["state"],
             "queued"),
            ("get", lambda: store.get(ids[0])["id"], ids[0]),
            ("list", lambda: len(store.list()), 4),
            ("count", lambda: store.count("queued"), 4),
            ("claim", lambda: store.claim("w", LONG)["id"], ids[0]),
            ("heartbeat", lambda: store.heartbeat(ids[0], "w", {"step": 1}, LONG), True),
            ("finish", lambda: store.finish(ids[0], "w", "succeeded", video="v.mp4"), True),
            ("cancel", lambda: store.cancel(ids[1])["state"], "cancelled"),
            ("requeue_running", lambda: (store.claim(dead, LONG), store.requeue_running())[1], 1),
        ]
        for name, call, expected in calls:
            _kill_connections(postgres_dsn)
            assert call() == expected, name
        assert store.count() == 4 and store.count("succeeded") == 1  # nothing done twice


def test_a_database_that_is_gone_raises_queue_unavailable():
    from wanmoe.serve.store_postgres import PostgresStore, QueueUnavailable

    server = PostgresServer(ensure_installed())
    try:
        store = PostgresStore(server.dsn(), connect_timeout=2)
        job = store.create({"prompt": "x"}, 1, max_queued=1)
    finally:
        server.stop()
    with pytest.raises(QueueUnavailable) as e:
        store.get(job["id"])
    assert "\n" not in str(e.value)
    store.close()
    with pytest.raises(RuntimeError):
        store.get(job["id"])  # a closed store says so
