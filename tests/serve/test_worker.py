"""The worker in-process on the demo model: failures, damaged checkpoints, per-job LoRAs."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers_lora import block_modules, lora_factors, write_layout
from wanmoe.pipeline import load_pipeline
from wanmoe.request import runtime_config
from wanmoe.serve.jobs import LoraSetup, default_limits, normalise
from wanmoe.serve.store import SQLiteStore
from wanmoe.serve.worker import DataDir, Worker

KW = {"steps": 3, "frames": 5, "size": "64*64"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs: one OpenMP thread is faster on the shared 2-core box (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(runtime=runtime_config("cpu", lora_mode="runtime"))


@pytest.fixture
def setup(tmp_path, pipe):
    store = SQLiteStore(tmp_path / "data" / "jobs.sqlite3")
    data = DataDir(tmp_path / "data").make()
    yield store, data, pipe
    store.close()


def _run(store, worker, body, pipe, loras=None):
    req, _ = normalise(body, pipe.preset, default_limits(pipe.preset, 10), loras=loras)
    job = store.create(req, req["seed"], max_queued=10)
    claimed = store.claim(worker.worker_id, 30)
    assert claimed["id"] == job["id"]
    worker.run_job(claimed)
    return store.get(job["id"])


def test_a_failing_job_ends_failed_with_one_line(setup):
    store, data, pipe = setup
    worker = Worker(store, pipe, data, "w", checkpoint_every=1)
    req, _ = normalise({"prompt": "a red ball", **KW}, pipe.preset, default_limits(pipe.preset, 10))
    req["frames"] = 6  # a row written under other rules (or by hand): refused by the worker
    job = store.create(req, req["seed"], max_queued=10)
    worker.run_job(store.claim("w", 30))
    done = store.get(job["id"])
    assert done["state"] == "failed" and done["error"].startswith("frames 6 is not of the form")
    assert "\n" not in done["error"] and "Traceback" not in done["error"]
    assert not data.checkpoint(job["id"]).exists() and not data.video(job["id"]).exists()
    assert worker.ended == {job["id"]: "failed"}


def test_a_damaged_checkpoint_is_dropped_and_the_job_starts_over(setup, caplog):
    store, data, pipe = setup
    worker = Worker(store, pipe, data, "w", checkpoint_every=1, save_latents=True)
    req, _ = normalise({"prompt": "a red ball", "seed": 3, **KW}, pipe.preset,
                       default_limits(pipe.preset, 10))
    job = store.create(req, 3, max_queued=10)
    data.checkpoint(job["id"]).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="wanmoe.serve"):
        worker.run_job(store.claim("w", 30))
    assert store.get(job["id"])["state"] == "succeeded"
    assert "not usable" in caplog.text and "starting over" in caplog.text
    assert not data.checkpoint(job["id"]).exists()
    got = load_file(data.latents(job["id"]))["latents"]
    ref = pipe.generate("a red ball", seed=3, progress=False, **KW).latents
    assert torch.equal(got, ref)


def test_per_job_loras_are_swapped_between_jobs(setup, tmp_path):
    store, data, pipe = setup
    folder = tmp_path / "loras"
    folder.mkdir()
    state = pipe.experts["low_noise"].state_dict()
    factors = lora_factors(state, block_modules(pipe.preset.dit.num_layers), rank=2, seed=1)
    save_file(write_layout(factors, "comfy_AB"), str(folder / "style.safetensors"))
    worker = Worker(store, pipe, data, "w", checkpoint_every=0, save_latents=True,
                    loras=LoraSetup(folder))
    body = {"prompt": "a blue square", "seed": 2, **KW}
    with_lora = _run(store, worker, {**body, "loras": [{"name": "style.safetensors",
                                                        "expert": "low", "strength": 0.7}]},
                     pipe, LoraSetup(folder))
    without = _run(store, worker, body, pipe)
    assert with_lora["state"] == without["state"] == "succeeded"
    a = load_file(data.latents(with_lora["id"]))["latents"]
    b = load_file(data.latents(without["id"]))["latents"]
    plain = pipe.generate("a blue square", seed=2, progress=False, **KW).latents
    pipe.set_loras(low=[(str(folder / "style.safetensors"), 0.7)])
    try:
        styled = pipe.generate("a blue square", seed=2, progress=False, **KW).latents
    finally:
        pipe.set_loras()
    assert torch.equal(b, plain) and torch.equal(a, styled) and not torch.equal(a, b)
