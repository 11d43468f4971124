"""Denoise checkpoints: an interrupted run resumed from its checkpoint ends with exactly the
latents of an uninterrupted run (every solver), and what cannot resume exactly is refused."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from wanmoe import cli
from wanmoe.errors import InputError
from wanmoe.pipeline import load_pipeline
from wanmoe.sampling import SOLVERS

KW = dict(size="64*64", frames=5, steps=7, seed=11, progress=False)
PROMPT = "a red ball rolls to the right"


class Stop(Exception):
    """What a server's cancel or a crash looks like to the pipeline: the run ends mid-way."""


@pytest.fixture(scope="module")
def pipe(a14b_dir):
    return load_pipeline(a14b_dir, device="cpu")


def stop_after(n):
    def on_step(done, total, expert):
        assert 1 <= done <= total and expert in ("high_noise", "low_noise")
        if done == n:
            raise Stop(f"stopped after step {n}")
    return on_step


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_resume_equals_uninterrupted_run(pipe, tmp_path, solver):
    kw = dict(KW, solver=solver, steps=4 if solver == "euler-lightning" else 7)
    plain = pipe.generate(PROMPT, **kw)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Stop):  # saved after steps 2 and 4; stopped after step 5 (or 3 of 4)
        pipe.generate(PROMPT, **kw, checkpoint=ckpt, checkpoint_every=2,
                      on_step=stop_after(5 if kw["steps"] == 7 else 3))
    seen = []
    resumed = pipe.generate(PROMPT, **kw, resume=ckpt,
                            on_step=lambda done, total, expert: seen.append(done))
    assert torch.equal(resumed.latents, plain.latents)
    assert torch.equal(resumed.frames, plain.frames)
    assert resumed.expert_per_step == plain.expert_per_step
    last_saved = 4 if kw["steps"] == 7 else 2
    assert seen == list(range(last_saved + 1, kw["steps"] + 1))  # only the remaining steps run


def test_checkpoints_do_not_change_the_result(pipe, tmp_path):
    plain = pipe.generate(PROMPT, **KW)
    with_ckpt = pipe.generate(PROMPT, **KW, checkpoint=tmp_path / "c.ckpt", checkpoint_every=1)
    assert torch.equal(with_ckpt.latents, plain.latents)


def test_resume_refuses_another_request_and_bad_files(pipe, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        pipe.generate(PROMPT, **KW, checkpoint=ckpt, checkpoint_every=2, on_step=stop_after(3))
    for change in (dict(seed=12), dict(steps=8), dict(guide_scale=2.0), dict(size="64*48")):
        with pytest.raises(InputError, match="different request"):
            pipe.generate(PROMPT, **{**KW, **change}, resume=ckpt)
    with pytest.raises(InputError, match="different request"):
        pipe.generate(PROMPT + " fast", **KW, resume=ckpt)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable wanmoe checkpoint"):
        pipe.generate(PROMPT, **KW, resume=bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(InputError, match="not a wanmoe denoise checkpoint"):
        pipe.generate(PROMPT, **KW, resume=bad)
    with pytest.raises(InputError, match="step cache"):
        pipe.generate(PROMPT, **KW, resume=ckpt, cache="easy")
    with pytest.raises(InputError, match="checkpoint_every"):
        pipe.generate(PROMPT, **KW, checkpoint=ckpt, checkpoint_every=-1)
    with pytest.raises(InputError, match="does not exist"):
        pipe.generate(PROMPT, **KW, resume=tmp_path / "missing.ckpt")


def test_cli_flags_are_checked_before_loading(a14b_dir, tmp_path, capsys):
    base = ["generate", PROMPT, "--ckpt-dir", str(a14b_dir), "--size", "64*64", "--frames", "5",
            "--steps", "4", "--device", "cpu", "--quiet", "--out", str(tmp_path / "o.mp4")]
    for extra, message in ((["--checkpoint-every", "-2"], "must be >= 0"),
                           (["--resume", str(tmp_path / "nope.ckpt")], "no such file"),
                           (["--checkpoint", str(tmp_path / "c.ckpt")], "needs --checkpoint-every")):
        assert cli.main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_cli_sigkill_then_resume_gives_identical_latents(tmp_path):
    """A real crash: SIGKILL the process once a checkpoint exists, then --resume (demo model)."""
    prompt = "a green square moves up on a black background"
    common = [sys.executable, "-m", "wanmoe", "generate", prompt, "--device", "cpu", "--quiet",
              "--steps", "12"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(common + ["--seed", "5", "--out", str(tmp_path / "ref.mp4"),
                                   "--save-latents", str(tmp_path / "ref.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    ckpt = tmp_path / "run.ckpt"
    out = tmp_path / "run.mp4"
    proc = subprocess.Popen(common + ["--seed", "5", "--out", str(out), "--checkpoint-every", "1",
                                      "--checkpoint", str(ckpt), "--save-latents",
                                      str(tmp_path / "run.safetensors")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"the run ended (rc {proc.returncode}) before a checkpoint was written")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt.exists() and not out.exists()
    res = subprocess.run(common + ["--out", str(out), "--resume", str(ckpt), "--save-latents",
                                   str(tmp_path / "run.safetensors")],  # seed read from the file
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert torch.equal(load_file(tmp_path / "run.safetensors")["latents"],
                       load_file(tmp_path / "ref.safetensors")["latents"])
    assert "seed: 5" in res.stdout
    assert not ckpt.exists()  # removed once the video is written
