"""Workers of `wanmoe serve`: one thread per device, each with its own loaded pipeline.

A worker claims the oldest queued job (`JobStore.claim`), runs it and ends it:

    request -> pipe.settings(...) (validated again: cheap, and the stored request may be old)
    -> pipe.generate(..., on_step, checkpoint=DATA/checkpoints/<id>.ckpt, checkpoint_every=K,
                     resume=that file when an earlier run of this job left one)
    -> DATA/videos/<id>.mp4 (written to a temp name and renamed: `video.write_mp4`)
    -> finish(succeeded) and the checkpoint file is removed.

A timer thread extends the job's lease every lease_s/3 seconds (a real step can take a minute);
`on_step` stores the progress and learns from the same call whether the job was cancelled, so
a cancelled job stops within one step. Server shutdown also stops the job after the current
step, but leaves it resumable: the checkpoint file stays and the lease is dropped, so the next
start of the server (or another worker on a shared queue) continues it. Any other exception
fails the job with one line (the traceback goes to the server's log).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path

from ..errors import InputError
from .store import JobStore, is_job_id

log = logging.getLogger("wanmoe.serve")
IDLE_POLL_S = 0.25  # how often an idle worker looks for work queued by another process


class DataDir:
    """The data dir's layout; files are named by job id only (checked before any path is made)."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.videos = self.root / "videos"
        self.checkpoints = self.root / "checkpoints"

    def make(self) -> "DataDir":
        for d in (self.root, self.videos, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def video(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.videos / f"{job_id}.mp4"

    def latents(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / "latents" / f"{job_id}.safetensors"

    def checkpoint(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.checkpoints / f"{job_id}.ckpt"


def one_line(e: BaseException) -> str:
    """An exception as one line for a job's `error` (no traceback)."""
    text = " ".join(str(e).split())
    if isinstance(e, InputError) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Stop(Exception):
    """Raised inside on_step to end a run after the current step ('cancel' or 'shutdown')."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Heartbeat(threading.Thread):
    """Extends the lease of one running job every lease_s/3 s until stopped."""

    def __init__(self, store: JobStore, job_id: str, worker: str, lease_s: float) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.store, self.job_id, self.worker, self.lease_s = store, job_id, worker, lease_s
        self.done = threading.Event()
        self.keep = True  # False once the store says stop (cancel requested or lease lost)

    def run(self) -> None:
        while not self.done.wait(self.lease_s / 3):
            try:
                self.keep = self.store.heartbeat(self.job_id, self.worker, None, self.lease_s)
            except Exception as e:  # a busy or unreachable store: try again next beat
                log.warning("heartbeat of job %s failed: %s", self.job_id, one_line(e))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


class Worker(threading.Thread):
    """Claims and runs jobs on one pipeline until `stop()`."""

    def __init__(self, store: JobStore, pipe, data: DataDir, name: str, *, lease_s: float = 30.0,
                 checkpoint_every: int = 5, loras=None, on_change=None, vae_tiling=None,
                 save_latents: bool = False) -> None:
        super().__init__(name=f"worker-{name.rsplit(':', 1)[-1]}", daemon=True)
        self.store, self.pipe, self.data, self.worker_id = store, pipe, data, name
        self.lease_s, self.checkpoint_every = lease_s, checkpoint_every
        self.loras = loras  # wanmoe.serve.jobs.LoraSetup when per-job LoRAs are allowed
        self.vae_tiling = vae_tiling
        self.save_latents = save_latents  # also DATA/latents/<id>.safetensors
        self.on_change = on_change or (lambda job_id: None)  # wakes event streams
        self.bell = threading.Event()  # rung when a job is queued here
        self.stopping = threading.Event()
        self.current: str | None = None
        self.ended: dict[str, str] = {}  # job id -> state, for the jobs this worker ended

    def stop(self) -> None:
        """Take no new job; a running one stops after its current step, resumable."""
        self.stopping.set()
        self.bell.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.bell.clear()
            try:
                job = self.store.claim(self.worker_id, self.lease_s)
            except Exception as e:
                log.error("claiming a job failed: %s", one_line(e))
                self.bell.wait(1.0)
                continue
            if job is None:
                self.bell.wait(IDLE_POLL_S)
                continue
            self.current = job["id"]
            try:
                self.run_job(job)
            except Exception as e:  # the store failed while ending the job: the lease will
                # run out and the job be claimed again; this worker goes on with the next one
                log.error("job %s: could not be ended (%s)", job["id"], one_line(e))
                self.bell.wait(1.0)
            finally:
                self.current = None

    # ---- one job ---------------------------------------------------------------------------
    def run_job(self, job: dict) -> None:
        job_id = job["id"]
        ckpt = self.data.checkpoint(job_id)
        log.info("job %s started on %s (attempt %d%s)", job_id, self.worker_id, job["attempts"],
                 ", resuming" if ckpt.exists() else "")
        self.on_change(job_id)
        beat = _Heartbeat(self.store, job_id, self.worker_id, self.lease_s)
        beat.start()

        def on_step(done: int, total: int, expert: str) -> None:
            keep = self.store.heartbeat(job_id, self.worker_id,
                                        {"step": int(done), "steps": int(total), "expert": expert},
                                        self.lease_s)
            self.on_change(job_id)
            if self.stopping.is_set():
                raise _Stop("shutdown")
            if not keep or not beat.keep:
                raise _Stop("cancel")

        try:
            video = self._generate(job, ckpt, on_step)
        except _Stop as s:
            if s.reason == "shutdown":  # resumable: keep the checkpoint, drop the lease now
                self.store.heartbeat(job_id, self.worker_id, None, 0.0)
                log.info("job %s paused for shutdown (resumable)", job_id)
            else:
                self._end(job_id, "cancelled", ckpt)
            return
        except Exception as e:
            log.error("job %s failed:\n%s", job_id, traceback.format_exc().rstrip())
            self._end(job_id, "failed", ckpt, error=one_line(e))
            return
        finally:
            beat.stop()
            self.on_change(job_id)
        self._end(job_id, "succeeded", ckpt, video=video.name)

    def _end(self, job_id: str, state: str, ckpt: Path, **kw) -> None:
        if self.store.finish(job_id, self.worker_id, state, **kw):
            self.ended[job_id] = state
            ckpt.unlink(missing_ok=True)
            log.info("job %s %s%s", job_id, state, f": {kw['error']}" if kw.get("error") else "")
        else:  # another worker owns it now (our lease ran out): its checkpoint is its own
            log.warning("job %s was no longer owned by %s; not ended here", job_id, self.worker_id)
        self.on_change(job_id)

    def _generate(self, job: dict, ckpt: Path, on_step) -> Path:
        from ..video import write_mp4

        req = job["request"]
        settings = self.pipe.settings(size=req["size"], frames=req["frames"], steps=req["steps"],
                                      shift=req["shift"], guide_scale=req["guide_scale"],
                                      solver=req["solver"], seed=job["seed"])
        if self.loras is not None:
            self.loras.apply(self.pipe, req.get("loras") or [])
        every = self.checkpoint_every

        def run(resume):
            return self.pipe.generate(req["prompt"], req.get("negative_prompt"), settings=settings,
                                      progress=False, on_step=on_step, vae_tiling=self.vae_tiling,
                                      checkpoint=ckpt if every > 0 else None,
                                      checkpoint_every=every, resume=resume)

        if ckpt.exists():
            try:
                result = run(ckpt)
            except InputError as e:  # a checkpoint of another request or a damaged file
                log.warning("job %s: checkpoint %s not usable (%s); starting over", job["id"],
                            ckpt.name, one_line(e))
                ckpt.unlink(missing_ok=True)
                result = run(None)
        else:
            result = run(None)
        if self.save_latents:  # before the video: a succeeded job has every file
            from ..video import save_latents

            save_latents(self.data.latents(job["id"]), result.latents)
        return write_mp4(self.data.video(job["id"]), result.frames, result.fps)


def wait_idle(workers: list[Worker], timeout: float | None) -> bool:
    """Join stopped workers; True when all ended within `timeout` seconds (None: no limit)."""
    end = None if timeout is None else time.monotonic() + timeout
    for w in workers:
        w.join(None if end is None else max(0.0, end - time.monotonic()))
    return not any(w.is_alive() for w in workers)


__all__ = ["DataDir", "Worker", "one_line", "wait_idle"]
