"""A queue worker in its own process, for the scale-out tests and benchmarks/bench_queue.py.

    python tests/serve/store_worker.py SPEC NAME MODE [--go FILE] [--done FILE] [--lease S]
                                                      [--work-ms MS] [--beats 0|2]

SPEC is what `wanmoe serve --queue` takes (sqlite:PATH or postgresql://...), opened with
`wanmoe.serve.stores.open_store`, so each process has its own connection(s). The worker prints
`ready`, waits until the file --go exists (so that all workers start together), then:

- MODE `claim`: claims until the queue is empty, finishing nothing; prints `claimed ID` each.
- MODE `work`: claim -> heartbeat (progress) -> --work-ms of "work" -> heartbeat -> finish
  (succeeded, video ID.mp4; --beats 0: claim -> finish); prints `finished ID True|False` each. When a claim finds nothing it
  stops if the file --done exists (the producer has created every job), else polls again.
- MODE `hold`: claims one job, prints `claimed ID`, then sleeps without heartbeating (the test
  kills it: a worker that died holding a job).

Last line: `stats N T0 T1` (jobs handled, time.time() at start and at the end).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wanmoe.serve.stores import open_store  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("name")
    ap.add_argument("mode", choices=("claim", "work", "hold"))
    ap.add_argument("--go")
    ap.add_argument("--done")
    ap.add_argument("--lease", type=float, default=30.0)
    ap.add_argument("--work-ms", type=float, default=0.0)
    ap.add_argument("--beats", type=int, choices=(0, 2), default=2,
                    help="heartbeats per job in MODE work (0: claim and finish only)")
    a = ap.parse_args(argv)
    store = open_store(a.spec, None)
    print("ready", flush=True)
    while a.go and not Path(a.go).exists():
        time.sleep(0.01)
    n, t0 = 0, time.time()
    out = []
    try:
        while True:
            job = store.claim(a.name, a.lease)
            if job is None:
                if a.mode == "work" and a.done and not Path(a.done).exists():
                    time.sleep(0.005)
                    continue
                break
            n += 1
            if a.mode == "hold":
                print(f"claimed {job['id']}", flush=True)
                time.sleep(3600)
            if a.mode == "claim":
                out.append(f"claimed {job['id']}")
                continue
            steps, alive = job["request"].get("steps", 2), True
            if a.beats:
                store.heartbeat(job["id"], a.name,
                                {"step": 1, "steps": steps, "expert": "low_noise"}, a.lease)
            if a.work_ms:
                time.sleep(a.work_ms / 1000)
            if a.beats:
                alive = store.heartbeat(job["id"], a.name,
                                        {"step": steps, "steps": steps, "expert": "low_noise"},
                                        a.lease)
            ok = store.finish(job["id"], a.name, "succeeded" if alive else "cancelled",
                              video=f"{job['id']}.mp4" if alive else None)
            out.append(f"finished {job['id']} {ok}")
    finally:
        t1 = time.time()
        store.close()
        # printed at the end, so that the log costs nothing while the workers race
        print("\n".join(out + [f"stats {n} {t0!r} {t1!r}"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
