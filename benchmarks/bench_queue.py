"""Job-queue throughput: jobs/s that 2 worker processes claim and finish, SQLite vs PostgreSQL.

For each store: N jobs are created (one producer, timed: create/s), then 2 worker processes
(tests/serve/store_worker.py, each opening the queue from its --queue spec with its own
connection) drain it, in two variants: claim -> finish, and claim -> 2 heartbeats -> finish (what
a real job does at least). Throughput = N / (last worker's end - first worker's start); each
variant runs --runs times, the median is printed. The queue is emptied (TRUNCATE / a new file)
between runs. Durable settings on both sides, as a deployment runs them: SQLite WAL with
synchronous=FULL (SQLiteStore's), PostgreSQL with fsync and synchronous_commit on (defaults);
the PostgreSQL server is local (TCP on 127.0.0.1), started from the Debian package by
tests/serve/pg_server.py. --no-fsync adds a PostgreSQL run without disk flushes (fsync,
synchronous_commit and full_page_writes off): the CPU-bound ceiling, not a setting to deploy.

Usage: python benchmarks/bench_queue.py [--jobs 1000] [--runs 3] [--no-fsync]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "serve"))

from pg_server import PostgresServer, ensure_installed  # noqa: E402

from wanmoe.serve.stores import open_store  # noqa: E402

WORKER = REPO / "tests" / "serve" / "store_worker.py"


def drain(spec: str, beats: int, tmp: Path) -> float:
    """Start 2 workers, let them go together, return jobs/s over their common span."""
    go = tmp / f"go-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(WORKER), spec, f"w{i}", "work", "--go", str(go),
                               "--beats", str(beats)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    spans, n = [], 0
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        _, k, t0, t1 = out.strip().split("\n")[-1].split()
        n += int(k)
        spans.append((float(t0), float(t1)))
    return n, n / (max(t for _, t in spans) - min(t for t, _ in spans))


def bench(kind: str, spec: str, reset, jobs: int, runs: int, tmp: Path) -> dict:
    out = {"create": [], 0: [], 2: []}
    for _ in range(runs):
        for beats in (0, 2):
            reset()
            store = open_store(spec, tmp)
            t0 = time.perf_counter()
            for i in range(jobs):
                store.create({"prompt": f"job {i}", "steps": 2}, i, max_queued=jobs + 1)
            out["create"].append(jobs / (time.perf_counter() - t0))
            store.close()
            n, rate = drain(spec, beats, tmp)
            assert n == jobs, (n, jobs)
            check = open_store(spec, tmp)
            assert check.count("succeeded") == jobs
            check.close()
            out[beats].append(rate)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-fsync", action="store_true",
                    help="also PostgreSQL with fsync off: the ceiling without disk flushes")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    results = {}

    db = tmp / "jobs.sqlite3"

    def reset_sqlite():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)

    results["SQLite (WAL, synchronous=FULL)"] = bench("sqlite", f"sqlite:{db}", reset_sqlite,
                                                      a.jobs, a.runs, tmp)
    for durable in (True, False) if a.no_fsync else (True,):
        server = PostgresServer(ensure_installed(), durable=durable)
        try:
            import psycopg

            dsn = server.dsn()

            def reset_pg():
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("DROP TABLE IF EXISTS jobs")

            with psycopg.connect(dsn) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
            name = f"PostgreSQL {version} ({'fsync on' if durable else 'fsync off: not durable'})"
            results[name] = bench("postgres", dsn, reset_pg, a.jobs, a.runs, tmp)
        finally:
            server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.jobs} jobs, 2 worker processes, median of {a.runs} runs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| store | create/s (1 producer) | claim+finish jobs/s | claim+2 heartbeats+finish jobs/s |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['create']:.0f} | {r[0]:.0f} | {r[2]:.0f} |")


if __name__ == "__main__":
    main()
