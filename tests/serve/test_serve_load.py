"""Load: 200 jobs through a bounded queue (50) shared by two server processes on one data dir.

Clients submit to both servers at once and resubmit on 429 until accepted; both servers' workers
drain the one SQLite queue. Every accepted job must end exactly once (one 'job <id> succeeded'
line over both servers' logs), none may be lost, and both workers must have taken part.
"""

import threading
import time
from collections import Counter

import pytest
from helpers_serve import CHEAP, ended_lines

from .pg_server import postgres_server  # noqa: F401 (fixture)

N_JOBS = 200
QUEUE = 50


@pytest.mark.parametrize("queue", ["sqlite", "postgres"])
def test_200_jobs_two_servers_one_queue(serve_factory, tmp_path, queue, request):
    data = tmp_path / "data"
    flags = ("--queue-size", str(QUEUE), "--checkpoint-every", "0")
    if queue == "postgres":
        flags += ("--queue", request.getfixturevalue("postgres_server").new_database())
    servers = [serve_factory(data, *flags, log_name=f"{n}.log", wait=False) for n in ("one", "two")]
    for s in servers:  # started together, waited for together
        s.ready()
    accepted, refused = [], Counter()
    lock = threading.Lock()

    def client(k):
        for i in range(k, N_JOBS, 4):
            server = servers[i % 2]
            while True:
                status, job = server.json("POST", "/v1/jobs",
                                          {"prompt": f"a red ball {i}", "seed": i, **CHEAP})
                if status == 201:
                    with lock:
                        accepted.append(job["id"])
                    break
                assert status == 429 and "queue is full" in job["error"], (status, job)
                with lock:
                    refused[i % 2] += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == N_JOBS and len(set(accepted)) == N_JOBS
    assert sum(refused.values()) > 0  # the bound was hit and held
    deadline = time.monotonic() + 300
    while True:
        _, page = servers[0].json("GET", "/v1/jobs?limit=500")
        states = Counter(j["state"] for j in page["jobs"])
        if states["succeeded"] + states["failed"] + states["cancelled"] == N_JOBS:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    jobs = page["jobs"]
    assert page["total"] == N_JOBS and {j["id"] for j in jobs} == set(accepted)
    assert states == {"succeeded": N_JOBS}, states
    assert all(j["attempts"] == 1 for j in jobs)
    assert {j["request"]["seed"] for j in jobs} == set(range(N_JOBS))
    rcs = [s.stop() for s in servers]
    assert rcs == [0, 0]
    logs = servers[0].log() + servers[1].log()
    assert all(ended_lines(logs, j) == ["succeeded"] for j in accepted)
    per_server = Counter(("one" if f"job {j} succeeded" in servers[0].log() else "two")
                         for j in accepted)
    assert per_server["one"] > 0 and per_server["two"] > 0, per_server
    videos = sorted(p.stem for p in (data / "videos").glob("*.mp4"))
    assert videos == sorted(accepted)
