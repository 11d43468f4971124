"""SQLiteStore: the job queue's rules (atomic claim, exactly-once finish, leases, cancel, QueueFull).

Concurrency is real: several threads, each through its own connection, and two store objects on
one file (as two server processes would be). Leases expire on a fake clock, never by sleeping.
"""

import os
import socket
import threading
from collections import Counter

import pytest

from wanmoe.serve.store import MAX_ATTEMPTS, QueueFull, SQLiteStore, is_job_id, worker_name

REQ = {"prompt": "a red ball", "steps": 4}


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = SQLiteStore(tmp_path / "jobs.sqlite3", clock=clock)
    yield s
    s.close()


def test_create_get_list_count(store, clock):
    ids = []
    for i in range(5):
        clock.t += 1
        ids.append(store.create({**REQ, "i": i}, seed=i, max_queued=10)["id"])
    assert all(is_job_id(i) for i in ids) and len(set(ids)) == 5
    job = store.get(ids[2])
    assert job["state"] == "queued" and job["request"]["i"] == 2 and job["seed"] == 2
    assert job["created"] == 1003.0 and job["started"] is None and job["attempts"] == 0
    assert job["progress"] == {"step": 0, "steps": 4, "expert": None}
    assert [j["id"] for j in store.list()] == ids[::-1]  # newest first
    assert [j["id"] for j in store.list(limit=2, offset=1)] == [ids[3], ids[2]]
    assert store.count() == 5 and store.count("queued") == 5 and store.count("running") == 0
    assert store.get("0" * 32) is None
    assert store.get("../../etc/passwd") is None and store.get(ids[0].upper()) is None


def test_queue_full_counts_queued_jobs_only(store):
    a = store.create(REQ, 1, max_queued=2)
    store.create(REQ, 2, max_queued=2)
    with pytest.raises(QueueFull) as e:
        store.create(REQ, 3, max_queued=2)
    assert "2 queued" in str(e.value) and e.value.max_queued == 2
    assert store.claim("w", 30)["id"] == a["id"]  # one starts: room for one more
    store.create(REQ, 3, max_queued=2)
    with pytest.raises(QueueFull):
        store.create(REQ, 4, max_queued=2)
    assert store.count() == 3


def test_queue_limit_holds_under_concurrent_submits(tmp_path, clock):
    stores = [SQLiteStore(tmp_path / "q.sqlite3", clock=clock) for _ in range(2)]
    made, full = [], []
    lock = threading.Lock()

    def submit(s):
        for _ in range(15):
            try:
                job = s.create(REQ, 0, max_queued=20)
                with lock:
                    made.append(job["id"])
            except QueueFull:
                with lock:
                    full.append(1)

    threads = [threading.Thread(target=submit, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 20 and len(set(made)) == 20 and len(full) == 40
    assert stores[0].count("queued") == 20
    for s in stores:
        s.close()


def test_claim_is_atomic_across_threads_and_store_objects(tmp_path, clock):
    """8 threads over two store objects (two connections each way, like two processes) drain
    120 jobs: every job is claimed exactly once and finished exactly once."""
    stores = [SQLiteStore(tmp_path / "c.sqlite3", clock=clock) for _ in range(2)]
    ids = [stores[0].create(REQ, i, max_queued=1000)["id"] for i in range(120)]
    claims, finishes = Counter(), Counter()
    lock = threading.Lock()

    def work(s, name):
        while True:
            job = s.claim(name, 30)
            if job is None:
                return
            assert job["state"] == "running" and job["worker"] == name
            ok = s.finish(job["id"], name, "succeeded", video=f"{job['id']}.mp4")
            again = s.finish(job["id"], name, "succeeded")
            with lock:
                claims[job["id"]] += 1
                finishes[job["id"]] += ok + again

    threads = [threading.Thread(target=work, args=(stores[i % 2], f"w{i}")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(claims) == set(ids)
    assert set(claims.values()) == {1} and set(finishes.values()) == {1}
    assert stores[1].count("succeeded") == 120
    assert all(j["video"] == f"{j['id']}.mp4" and j["attempts"] == 1
               for j in stores[1].list(limit=500))
    for s in stores:
        s.close()


def test_claim_order_and_finish_rules(store, clock):
    a = store.create(REQ, 1, max_queued=10)["id"]
    b = store.create(REQ, 2, max_queued=10)["id"]
    clock.t = 1010.0
    job = store.claim("w1", 30)
    assert job["id"] == a and job["started"] == 1010.0 and job["lease_until"] == 1040.0
    assert job["attempts"] == 1
    assert store.finish(a, "w2", "succeeded") is False  # not the owner
    assert store.finish(b, "w1", "succeeded") is False  # not running
    with pytest.raises(ValueError):
        store.finish(a, "w1", "running")
    clock.t = 1020.0
    assert store.finish(a, "w1", "failed", error="boom") is True
    assert store.finish(a, "w1", "succeeded") is False  # exactly once
    done = store.get(a)
    assert done["state"] == "failed" and done["error"] == "boom" and done["finished"] == 1020.0
    assert store.claim("w1", 30)["id"] == b
    assert store.claim("w1", 30) is None


def test_heartbeat_extends_lease_and_stores_progress(store, clock):
    a = store.create(REQ, 1, max_queued=10)["id"]
    store.claim("w1", 30)
    clock.t += 25
    assert store.heartbeat(a, "w1", {"step": 3, "steps": 4, "expert": "low_noise"}, 30) is True
    job = store.get(a)
    assert job["progress"] == {"step": 3, "steps": 4, "expert": "low_noise"}
    assert job["lease_until"] == clock.t + 30
    assert store.heartbeat(a, "w1", None, 30) is True
    assert store.get(a)["progress"]["step"] == 3  # None keeps the stored progress
    assert store.heartbeat(a, "intruder", None, 30) is False
    clock.t += 29  # within the extended lease: nobody else may claim it
    assert store.claim("w2", 30) is None


def test_expired_lease_is_reclaimed_and_the_old_worker_loses_the_job(store, clock):
    a = store.create(REQ, 1, max_queued=10)["id"]
    b = store.create(REQ, 2, max_queued=10)["id"]
    store.claim("w1", 10)
    clock.t += 5
    assert store.claim("w2", 10)["id"] == b  # a's lease still holds: the next queued job
    clock.t += 6  # a's lease ran out (w1 died); b's too
    job = store.claim("w3", 10)
    assert job["id"] == a and job["worker"] == "w3" and job["attempts"] == 2
    assert job["started"] == 1000.0  # first start kept
    assert store.heartbeat(a, "w1", None, 10) is False
    assert store.finish(a, "w1", "succeeded") is False
    assert store.finish(a, "w3", "succeeded") is True


def test_a_job_that_kills_its_worker_every_time_fails(store, clock):
    a = store.create(REQ, 1, max_queued=10)["id"]
    for i in range(MAX_ATTEMPTS):
        assert store.claim(f"w{i}", 10)["attempts"] == i + 1
        clock.t += 11
    assert store.claim("w9", 10) is None
    job = store.get(a)
    assert job["state"] == "failed" and f"after {MAX_ATTEMPTS} attempts" in job["error"]


def test_cancel_in_each_state(store, clock):
    q = store.create(REQ, 1, max_queued=10)["id"]
    r = store.create(REQ, 2, max_queued=10)["id"]
    d = store.create(REQ, 3, max_queued=10)["id"]
    clock.t += 1
    assert store.cancel(q)["state"] == "cancelled"  # queued: at once
    assert store.get(q)["finished"] == clock.t
    assert store.claim("w", 30)["id"] == r  # a cancelled job is never claimed
    job = store.cancel(r)  # running: flagged, the worker stops it
    assert job["state"] == "running" and job["cancel_requested"] is True
    assert store.heartbeat(r, "w", {"step": 1, "steps": 4, "expert": "high_noise"}, 30) is False
    assert store.finish(r, "w", "cancelled") is True
    assert store.claim("w", 30)["id"] == d
    store.finish(d, "w", "succeeded")
    for job_id, state in ((q, "cancelled"), (r, "cancelled"), (d, "succeeded")):
        assert store.cancel(job_id)["state"] == state  # terminal: unchanged
    assert store.cancel("f" * 32) is None and store.cancel("../x") is None


def test_cancel_requested_job_of_a_dead_worker_ends_cancelled(store, clock):
    a = store.create(REQ, 1, max_queued=10)["id"]
    store.claim("w1", 10)
    store.cancel(a)
    clock.t += 11
    assert store.claim("w2", 10) is None
    assert store.get(a)["state"] == "cancelled"


def test_requeue_running_after_a_crash(tmp_path, clock):
    path = tmp_path / "r.sqlite3"
    s = SQLiteStore(path, clock=clock)
    dead = s.create(REQ, 1, max_queued=10)["id"]
    cancelled = s.create(REQ, 2, max_queued=10)["id"]
    alive = s.create(REQ, 3, max_queued=10)["id"]
    host = socket.gethostname()
    s.claim(f"{host}:{2**22 + 12345}:0-cpu", 3600)  # a pid no process has (above pid_max)
    s.claim(worker_name("0-cpu"), 3600)  # this process: an earlier life of this server
    s.cancel(cancelled)
    s.claim(f"{host}:{os.getppid()}:0-cpu", 3600)  # a live process: another server's job
    s.close()
    s = SQLiteStore(path, clock=clock)  # the restart
    assert s.requeue_running() == 1
    assert s.get(dead)["state"] == "queued" and s.get(dead)["worker"] is None
    assert s.get(cancelled)["state"] == "cancelled"
    assert s.get(alive)["state"] == "running"
    assert s.claim("new", 30)["id"] == dead
    s.close()


def test_jobs_persist_across_reopen(tmp_path, clock):
    path = tmp_path / "p.sqlite3"
    s = SQLiteStore(path, clock=clock)
    ids = [s.create({**REQ, "n": i}, i, max_queued=10)["id"] for i in range(3)]
    s.close()
    s = SQLiteStore(path, clock=clock)
    assert [j["id"] for j in s.list()] == ids[::-1] and s.get(ids[1])["request"]["n"] == 1
    assert s._con().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_job_ids():
    assert is_job_id("0123456789abcdef0123456789abcdef")
    for bad in ("0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdeg",
                "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0",
                "../../etc/passwd", "0123456789abcdef0123456789abcde\n", None, 5):
        assert not is_job_id(bad)
