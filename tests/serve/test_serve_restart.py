"""Jobs survive the server: SIGKILL with a running and queued jobs, then SIGTERM mid-job.

One data dir, three lives of `wanmoe serve`:
  a: a long job runs, three wait; SIGKILL right after the long job's first checkpoint
  b: every job ends exactly once; the long job resumed from its checkpoint and its latents
     equal those of the same request run uninterrupted; then SIGTERM mid-job -> exit 0
  c: that job resumes and ends.
"""

import time

import numpy as np
import torch
from safetensors.torch import load_file

from helpers_serve import CHEAP, ended_lines
from wanmoe.serve.store import SQLiteStore
from wanmoe.video import read_mp4

FLAGS = ("--checkpoint-every", "2", "--save-latents")
LONG = {"prompt": "a red ball moves right", "steps": 24, "seed": 5}  # 128*128, 17 frames


def _wait_file(path, timeout=120):
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.005)


def _jobs(data):
    s = SQLiteStore(data / "jobs.sqlite3")
    try:
        return {j["id"]: j for j in s.list(limit=100)}
    finally:
        s.close()


def test_jobs_survive_sigkill_and_sigterm(serve_factory, tmp_path):
    data = tmp_path / "data"
    a = serve_factory(data, *FLAGS, log_name="a.log")
    long_id = a.submit(LONG)[1]["id"]
    queued = [a.submit({"prompt": f"a green square {i}", **CHEAP})[1]["id"] for i in range(3)]
    _wait_file(data / "checkpoints" / f"{long_id}.ckpt")
    a.kill()  # SIGKILL: no clean-up of any kind
    at_kill = _jobs(data)
    assert at_kill[long_id]["state"] == "running"
    assert at_kill[long_id]["progress"]["step"] < LONG["steps"]
    assert [at_kill[q]["state"] for q in queued] == ["queued"] * 3

    b = serve_factory(data, *FLAGS, log_name="b.log")
    finals = {j: b.wait(j) for j in [long_id, *queued]}
    assert all(f["state"] == "succeeded" for f in finals.values()), finals
    assert finals[long_id]["attempts"] == 2 and all(finals[q]["attempts"] == 1 for q in queued)
    assert f"job {long_id} started" in b.log() and "resuming" in b.log()
    logs = a.log() + b.log()
    for job_id in [long_id, *queued]:
        assert ended_lines(logs, job_id) == ["succeeded"]  # ended exactly once
        assert not (data / "checkpoints" / f"{job_id}.ckpt").exists()
    # the same request, uninterrupted, on the same server
    ref_id = b.submit(LONG)[1]["id"]
    assert b.wait(ref_id)["state"] == "succeeded"
    resumed = load_file(data / "latents" / f"{long_id}.safetensors")["latents"]
    uninterrupted = load_file(data / "latents" / f"{ref_id}.safetensors")["latents"]
    assert torch.equal(resumed, uninterrupted)
    frames, _ = read_mp4(data / "videos" / f"{long_id}.mp4")
    ref_frames, _ = read_mp4(data / "videos" / f"{ref_id}.mp4")
    assert frames.shape == (17, 128, 128, 3)
    diff = np.abs(frames.astype(int) - ref_frames.astype(int))
    assert np.array_equal(frames, ref_frames)

    # SIGTERM (what Ctrl-C does) mid-job: the step ends, the job stays resumable, exit 0
    paused = b.submit({**LONG, "seed": 6})[1]["id"]
    _wait_file(data / "checkpoints" / f"{paused}.ckpt")
    assert b.stop() == 0
    assert b.lines[-1] == "wanmoe serve: stopped"
    job = _jobs(data)[paused]
    assert job["state"] == "running" and job["lease_until"] <= time.time()  # lease dropped
    assert (data / "checkpoints" / f"{paused}.ckpt").exists()
    assert "paused for shutdown" in b.log()

    c = serve_factory(data, *FLAGS, log_name="c.log")
    final = c.wait(paused)
    assert final["state"] == "succeeded" and final["attempts"] == 2
    assert "resuming" in c.log() and ended_lines(b.log() + c.log(), paused) == ["succeeded"]
    assert c.stop() == 0
