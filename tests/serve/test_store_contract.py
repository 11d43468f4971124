"""The JobStore contract (docs: notes in wanmoe/serve/store.py), one set of tests for both stores.

Every test runs on SQLite (the default, a file in a temp dir) and on PostgreSQL (a real server
from the Debian package, tests/serve/pg_server.py; a fresh database per test). Concurrency is
real: threads with their own store objects, and worker processes (tests/serve/store_worker.py)
that open the queue from its `--queue` spec with their own connections.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from wanmoe.serve.store import MAX_ATTEMPTS, QueueFull
from wanmoe.serve.stores import open_store

from .pg_server import postgres_server  # noqa: F401  (session fixture: one real server)

WORKER = Path(__file__).with_name("store_worker.py")
REPO = Path(__file__).resolve().parents[2]
FIELDS = {"id", "state", "request", "seed", "created", "started", "finished", "progress", "error",
          "worker", "attempts", "cancel_requested", "video", "lease_until"}
LONG = 600.0  # a lease that does not run out during a test


class Queue:
    """One queue under test: `spec` (what --queue takes) and `open()` for another handle on it."""

    def __init__(self, kind: str, spec: str):
        self.kind, self.spec = kind, spec
        self._opened = []

    def open(self):
        store = open_store(self.spec, None)
        self._opened.append(store)
        return store

    def close_all(self):
        for s in self._opened:
            s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request, tmp_path):
    if request.param == "sqlite":
        q = Queue("sqlite", f"sqlite:{tmp_path / 'jobs.sqlite3'}")
    else:
        server = request.getfixturevalue("postgres_server")
        q = Queue("postgres", server.new_database())
    yield q
    q.close_all()


@pytest.fixture
def store(queue):
    return queue.open()


def req(i=0, steps=4):
    return {"prompt": f"a red ball {i}", "size": "128*128", "frames": 17, "steps": steps,
            "guide_scale": [3.0, 4.0], "solver": "unipc"}


def fill(store, n, max_queued=10_000):
    return [store.create(req(i), 1000 + i, max_queued=max_queued)["id"] for i in range(n)]


def dead_worker(label="0"):
    """A worker id (store.worker_name's host:pid:label) of a process of this host that is gone."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    return f"{socket.gethostname()}:{int(p.stdout)}:{label}"


# --------------------------------------------------------------------------------------------
# --queue SPEC -> store


def test_open_store_defaults_to_sqlite_in_the_data_dir(tmp_path):
    from wanmoe.serve.store import SQLiteStore

    for spec in (None, ""):
        store = open_store(spec, tmp_path / "data")
        try:
            assert isinstance(store, SQLiteStore)
            assert store.path == tmp_path / "data" / "jobs.sqlite3" and store.path.exists()
        finally:
            store.close()


def test_open_store_sqlite_spec_names_the_file(tmp_path):
    from wanmoe.serve.store import SQLiteStore

    for spec, path in ((f"sqlite:{tmp_path}/a.db", tmp_path / "a.db"),
                       (f"sqlite://{tmp_path}/b.db", tmp_path / "b.db")):
        store = open_store(spec, tmp_path / "unused")
        try:
            assert isinstance(store, SQLiteStore) and store.path == path and path.exists()
        finally:
            store.close()
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------------------------------
# each method


def test_create_returns_a_queued_job_and_get_reads_it_back(store):
    before = time.time()
    job = store.create(req(1), 12345678901234567, max_queued=5)
    assert set(job) == FIELDS
    assert len(job["id"]) == 32 and int(job["id"], 16) >= 0 and job["id"] == job["id"].lower()
    assert job["state"] == "queued" and job["request"] == req(1)
    assert job["seed"] == 12345678901234567
    assert before - 5 <= job["created"] <= time.time() + 5  # unix seconds (the DB's clock)
    assert job["started"] is None and job["finished"] is None and job["lease_until"] is None
    assert job["worker"] is None and job["error"] is None and job["video"] is None
    assert job["attempts"] == 0 and job["cancel_requested"] is False
    assert job["progress"]["step"] == 0
    assert store.get(job["id"]) == job


def test_seed_range_and_request_round_trip(store):
    big = 2**63 - 1  # sys.maxsize: the largest seed validate.resolve_seed allows
    r = {"prompt": "un chat 猫 — «ok»", "negative_prompt": "", "seed": big, "loras": [],
         "guide_scale": 3.5, "shift": 12.0, "steps": 2}
    job = store.create(r, big, max_queued=5)
    got = store.get(job["id"])
    assert got["seed"] == big and got["request"] == r


def test_get_unknown_and_malformed_ids(store):
    fill(store, 1)
    for bad in ("0" * 32, "not-hex", "", "../../etc/passwd", "x' OR '1'='1"):
        assert store.get(bad) is None
        assert store.cancel(bad) is None


def test_list_is_newest_first_and_paged(store):
    ids = fill(store, 7)
    newest_first = list(reversed(ids))
    assert [j["id"] for j in store.list()] == newest_first
    assert [j["id"] for j in store.list(limit=3)] == newest_first[:3]
    assert [j["id"] for j in store.list(limit=3, offset=3)] == newest_first[3:6]
    assert [j["id"] for j in store.list(limit=10, offset=6)] == newest_first[6:]
    assert store.list(limit=5, offset=7) == []
    assert store.list(limit=0) == []
    assert all(set(j) == FIELDS for j in store.list())


def test_count_by_state(store):
    ids = fill(store, 5)
    a = store.claim("w", LONG)
    b = store.claim("w", LONG)
    store.finish(a["id"], "w", "succeeded", video=f"{a['id']}.mp4")
    store.cancel(ids[4])
    assert store.count() == 5
    assert {s: store.count(s) for s in ("queued", "running", "succeeded", "failed", "cancelled")} \
        == {"queued": 2, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 1}
    assert b["id"] == ids[1]


def test_claim_takes_the_oldest_queued_job_first(store):
    ids = fill(store, 4)
    got = [store.claim(f"w{i}", LONG)["id"] for i in range(4)]
    assert got == ids
    assert store.claim("w9", LONG) is None


def test_claim_sets_running_worker_lease_and_started(store):
    (jid,) = fill(store, 1)
    job = store.claim("gpu-host-1:cuda:0", 30.0)
    assert job["id"] == jid and job["state"] == "running"
    assert job["worker"] == "gpu-host-1:cuda:0"
    assert job["started"] is not None and job["started"] >= job["created"]
    # the lease: 30 s after the claim, on the store's clock (started is that same moment)
    assert job["lease_until"] == pytest.approx(job["started"] + 30.0, abs=1.0)
    assert store.get(jid) == job


def test_claim_on_an_empty_queue_returns_none(store):
    assert store.claim("w", LONG) is None


def test_heartbeat_extends_the_lease_and_stores_progress(store):
    fill(store, 1)
    job = store.claim("w1", 5.0)
    p = {"step": 3, "steps": 4, "expert": "low_noise"}
    assert store.heartbeat(job["id"], "w1", p, 300.0) is True
    now = store.get(job["id"])
    assert now["progress"] == p and now["state"] == "running"
    assert now["lease_until"] > job["lease_until"] + 200  # 300 s from now vs 5 s from the claim
    assert store.heartbeat(job["id"], "w1", None, 300.0) is True
    assert store.get(job["id"])["progress"] == p  # None keeps the last progress


def test_heartbeat_from_a_worker_that_does_not_own_the_job_is_refused(store):
    ids = fill(store, 2)
    job = store.claim("w1", LONG)
    before = store.get(job["id"])
    assert store.heartbeat(job["id"], "w2", {"step": 9, "steps": 9, "expert": "x"}, LONG) is False
    assert store.get(job["id"]) == before  # nothing changed
    assert store.heartbeat(ids[1], "w1", None, LONG) is False  # still queued: nobody owns it
    assert store.heartbeat("0" * 32, "w1", None, LONG) is False


def test_finish_once_by_the_owner_only(store):
    ids = fill(store, 3)
    a = store.claim("w1", LONG)
    assert store.finish(a["id"], "w2", "succeeded") is False  # not the owner
    assert store.get(a["id"])["state"] == "running"
    assert store.finish(a["id"], "w1", "succeeded", video=f"{a['id']}.mp4") is True
    assert store.finish(a["id"], "w1", "succeeded") is False  # exactly once
    assert store.finish(a["id"], "w1", "failed", error="late") is False
    done = store.get(a["id"])
    assert done["state"] == "succeeded" and done["video"] == f"{a['id']}.mp4"
    assert done["finished"] is not None and done["finished"] >= done["started"]
    assert done["error"] is None
    b = store.claim("w1", LONG)
    assert store.finish(b["id"], "w1", "failed", error="CUDA out of memory") is True
    assert store.get(b["id"])["error"] == "CUDA out of memory"
    assert store.get(b["id"])["state"] == "failed"
    assert store.finish(ids[2], "w1", "succeeded") is False  # queued: not running
    assert store.get(ids[2])["state"] == "queued"


def test_finish_refuses_a_state_that_is_not_terminal(store):
    fill(store, 1)
    job = store.claim("w1", LONG)
    for bad in ("queued", "running", "done"):
        with pytest.raises(ValueError):
            store.finish(job["id"], "w1", bad)
    assert store.get(job["id"])["state"] == "running"


def test_requeue_running_puts_the_jobs_of_dead_local_workers_back(store):
    ids = fill(store, 4)
    dead, alive = dead_worker(), f"{socket.gethostname()}:{os.getppid()}:0"  # pytest's parent
    a = store.claim(dead, LONG)
    b = store.claim(dead, LONG)
    store.finish(b["id"], dead, "succeeded")
    c = store.claim(dead, LONG)
    store.cancel(c["id"])  # cancel requested, then the server died
    d = store.claim(alive, LONG)  # another server on this host, still running
    assert store.requeue_running() == 1
    assert store.get(a["id"])["state"] == "queued" and store.get(a["id"])["worker"] is None
    assert store.get(b["id"])["state"] == "succeeded"
    assert store.get(c["id"])["state"] == "cancelled" and store.get(c["id"])["finished"]
    assert store.get(d["id"]) == d  # left to its live worker
    assert store.finish(a["id"], dead, "succeeded") is False  # the old owner lost it
    again = store.claim(alive, LONG)
    assert again["id"] == ids[0] and again["attempts"] == 2
    assert store.requeue_running() == 0


def test_a_second_handle_sees_the_same_queue(queue):
    a, b = queue.open(), queue.open()
    (jid,) = fill(a, 1)
    assert b.get(jid)["state"] == "queued"
    assert b.claim("w", LONG)["id"] == jid
    assert a.get(jid)["worker"] == "w"


# --------------------------------------------------------------------------------------------
# cancel in each state


def test_cancel_a_queued_job_cancels_it_at_once(store):
    (jid,) = fill(store, 1)
    job = store.cancel(jid)
    assert job["state"] == "cancelled" and job["finished"] is not None
    assert store.get(jid) == job
    assert store.claim("w", LONG) is None  # never runs


def test_cancel_a_running_job_asks_its_worker_to_stop(store):
    fill(store, 1)
    job = store.claim("w1", LONG)
    c = store.cancel(job["id"])
    assert c["state"] == "running" and c["cancel_requested"] is True and c["finished"] is None
    assert store.heartbeat(job["id"], "w1", {"step": 2, "steps": 4, "expert": "x"}, LONG) is False
    assert store.finish(job["id"], "w1", "cancelled") is True
    end = store.get(job["id"])
    assert end["state"] == "cancelled" and end["finished"] is not None


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_a_finished_job_changes_nothing(store, final):
    fill(store, 1)
    job = store.claim("w1", LONG)
    store.finish(job["id"], "w1", final, error="boom" if final == "failed" else None)
    before = store.get(job["id"])
    assert store.cancel(job["id"]) == before
    assert store.get(job["id"]) == before


def test_cancel_twice_is_harmless(store):
    ids = fill(store, 2)
    first = store.cancel(ids[0])
    assert store.cancel(ids[0]) == first
    job = store.claim("w", LONG)
    store.cancel(job["id"])
    again = store.cancel(job["id"])
    assert again["state"] == "running" and again["cancel_requested"] is True


# --------------------------------------------------------------------------------------------
# leases: a worker that dies holding a job


def test_lease_expiry_hands_the_job_to_another_worker(store):
    ids = fill(store, 1)
    dead = store.claim("w-dead", 1.0)
    assert store.claim("w2", LONG) is None  # the lease still holds
    time.sleep(1.2)  # > lease: w-dead sent no heartbeat
    took = store.claim("w2", LONG)
    assert took["id"] == ids[0] and took["worker"] == "w2" and took["state"] == "running"
    assert took["attempts"] == dead["attempts"] + 1
    assert took["started"] == dead["started"]  # set once, at the first claim
    # the dead worker comes back: it owns nothing any more
    assert store.heartbeat(ids[0], "w-dead", {"step": 4, "steps": 4, "expert": "x"}, LONG) is False
    assert store.finish(ids[0], "w-dead", "succeeded") is False
    assert store.finish(ids[0], "w2", "succeeded", video="v.mp4") is True


def test_expired_leases_are_claimed_before_queued_jobs(store):
    """The dead worker's job waited longest (and may resume from its checkpoint): it goes
    first, before newer queued jobs."""
    fill(store, 1)
    dead = store.claim("w-dead", 0.3)
    (fresh,) = fill(store, 1)
    time.sleep(0.6)
    assert store.claim("w2", LONG)["id"] == dead["id"]
    assert store.claim("w3", LONG)["id"] == fresh
    assert store.claim("w4", LONG) is None


def test_a_heartbeat_with_lease_zero_hands_the_job_on_at_once(store):
    """What a server shutting down does: the job stays resumable and the next claim takes it."""
    fill(store, 1)
    job = store.claim("w1", LONG)
    assert store.claim("w2", LONG) is None
    store.heartbeat(job["id"], "w1", None, 0.0)
    time.sleep(0.01)
    took = store.claim("w2", LONG)
    assert took["id"] == job["id"] and took["attempts"] == 2


def test_a_dead_workers_job_with_a_cancel_request_ends_cancelled(store):
    fill(store, 1)
    job = store.claim("w-dead", 0.3)
    store.cancel(job["id"])
    time.sleep(0.6)
    assert store.claim("w2", LONG) is None  # not run again
    end = store.get(job["id"])
    assert end["state"] == "cancelled" and end["finished"] is not None


def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(store):
    (jid,) = fill(store, 1)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = store.claim(f"w{attempt}", 0.2)
        assert job["id"] == jid and job["attempts"] == attempt
        time.sleep(0.4)  # the worker dies: no heartbeat, no finish
    assert store.claim("w-last", LONG) is None
    end = store.get(jid)
    assert end["state"] == "failed" and end["finished"] is not None
    assert str(MAX_ATTEMPTS) in end["error"] and "\n" not in end["error"]


def test_heartbeats_keep_a_job_from_being_taken(store):
    fill(store, 1)
    job = store.claim("w1", 1.0)
    for _ in range(4):  # 1.2 s in all, beyond the first lease, renewed every 0.3 s
        time.sleep(0.3)
        assert store.heartbeat(job["id"], "w1", None, 1.0) is True
    assert store.claim("w2", 1.0) is None


def test_a_killed_worker_process_loses_its_job_to_the_lease(queue, tmp_path):
    store = queue.open()
    (jid,) = fill(store, 1)
    p = subprocess.Popen([sys.executable, str(WORKER), queue.spec, "w-killed", "hold",
                          "--lease", "0.5"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert p.stdout.readline().split() == ["claimed", jid]
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert store.get(jid)["worker"] == "w-killed"
    time.sleep(0.8)
    took = store.claim("w2", LONG)
    assert took["id"] == jid and took["worker"] == "w2" and took["attempts"] == 2


# --------------------------------------------------------------------------------------------
# atomicity under concurrency


def _run_threads(n, target):
    barrier = threading.Barrier(n)
    errors = []

    def run(i):
        try:
            barrier.wait()
            target(i)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


@pytest.mark.parametrize("shared", [False, True], ids=["own-store", "shared-store"])
def test_claim_with_many_threads_never_gives_a_job_twice(queue, shared):
    n_threads, n_jobs = 6, 60
    ids = fill(queue.open(), n_jobs)
    one = queue.open() if shared else None
    stores = [one or queue.open() for _ in range(n_threads)]
    got = [[] for _ in range(n_threads)]

    def work(i):
        while (job := stores[i].claim(f"t{i}", LONG)) is not None:
            got[i].append(job["id"])

    _run_threads(n_threads, work)
    every = [j for g in got for j in g]
    assert Counter(every).most_common(1)[0][1] == 1  # no job claimed twice
    assert sorted(every) == sorted(ids)  # and none missed
    probe = queue.open()
    for i, g in enumerate(got):
        assert all(probe.get(j)["worker"] == f"t{i}" for j in g)


def _workers(queue, tmp_path, mode, names, *extra):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(WORKER), queue.spec, name, mode,
                               "--go", str(go), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for name in names]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            p.wait(30)
            pytest.fail(f"worker did not start: {line!r} {p.stderr.read()[-2000:]}")
    return go, procs


def _logs(procs):
    logs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        logs.append(out.split("\n"))
    return logs


def test_claim_from_two_processes_never_gives_a_job_twice(queue, tmp_path):
    ids = fill(queue.open(), 150)
    go, procs = _workers(queue, tmp_path, "claim", ["p0", "p1"])
    go.touch()
    logs = _logs(procs)
    claimed = [[ln.split()[1] for ln in log if ln.startswith("claimed ")] for log in logs]
    every = claimed[0] + claimed[1]
    assert len(every) == len(set(every)) == 150 and set(every) == set(ids)
    store = queue.open()
    for name, got in zip(["p0", "p1"], claimed):
        assert all(store.get(j)["worker"] == name for j in got)
    assert store.count("running") == 150


def test_queue_full_at_the_bound_under_concurrent_create(queue):
    n_threads, tries, bound = 8, 10, 25
    fill(queue.open(), 3)  # 3 queued already
    done = queue.open()
    finished = done.claim("w", LONG)  # a running job does not count against the bound
    stores = [queue.open() for _ in range(n_threads)]
    made, full = Counter(), Counter()

    def push(i):
        for k in range(tries):
            try:
                stores[i].create(req(100 * i + k), k, max_queued=bound)
                made[i] += 1
            except QueueFull:
                full[i] += 1

    _run_threads(n_threads, push)
    assert sum(made.values()) == bound - 2  # 2 of the 3 first jobs are still queued
    assert sum(full.values()) == n_threads * tries - (bound - 2)
    assert done.count("queued") == bound and done.count("running") == 1
    with pytest.raises(QueueFull):
        done.create(req(), 1, max_queued=bound)
    assert done.finish(finished["id"], "w", "succeeded")
    done.claim("w", LONG)  # one place frees up
    done.create(req(), 1, max_queued=bound)
    assert done.count("queued") == bound


def test_load_200_jobs_through_a_bounded_queue_and_two_worker_processes(queue, tmp_path):
    """Issue 15's load test: 200 jobs pushed into a queue of 10 (resubmitted on QueueFull) while
    two worker processes claim, heartbeat and finish; every job ends exactly once."""
    total, bound = 200, 10
    store = queue.open()
    done = tmp_path / "done"
    go, procs = _workers(queue, tmp_path, "work", ["wa", "wb"], "--done", str(done),
                         "--work-ms", "2")
    go.touch()
    ids, rejected = [], 0
    try:
        for i in range(total):
            while True:
                try:
                    ids.append(store.create(req(i, steps=2), i, max_queued=bound)["id"])
                    break
                except QueueFull:
                    rejected += 1
                    time.sleep(0.002)
                assert store.count("queued") <= bound
    finally:
        done.touch()
    logs = _logs(procs)
    finished = {name: [ln.split()[1:] for ln in log if ln.startswith("finished ")]
                for name, log in zip(["wa", "wb"], logs)}
    assert rejected > 0  # the bound was hit: this was a bounded queue under pressure
    # the workers' logs: every job finished exactly once, each finish accepted
    every = [jid for rows in finished.values() for jid, _ in rows]
    assert len(every) == total and set(every) == set(ids) and len(set(ids)) == total
    assert all(ok == "True" for rows in finished.values() for _, ok in rows)
    assert all(len(rows) > 0 for rows in finished.values())  # both workers shared the queue
    # the database: 200 jobs, all succeeded, each by the worker whose log names it
    assert store.count() == total and store.count("succeeded") == total
    by = {jid: name for name, rows in finished.items() for jid, _ in rows}
    for job in store.list(limit=total + 10):
        assert job["worker"] == by[job["id"]] and job["attempts"] == 1
        assert job["video"] == f"{job['id']}.mp4" and job["progress"]["step"] == 2
