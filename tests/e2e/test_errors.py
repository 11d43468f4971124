"""Bad input and broken checkpoints: one clear line on stderr, exit status 2, no traceback.

Input errors must be caught before any weights load: the component loaders and the tensor
readers are replaced by functions that fail the test if they are called.
"""

import json
import shutil

import pytest

from wanmoe import cli

TINY_ARGS = ["--size", "64*64", "--frames", "5", "--steps", "2", "--device", "cpu", "--quiet"]


def _run(capsys, *argv) -> str:
    rc = cli.main(["generate", "a red ball", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("args,message", [
    (["--size", "1000*720"], "width 1000 is not a multiple of 16; use 992 or 1008"),
    (["--size", "64*72"], "height 72 is not a multiple of 16; use 64 or 80"),
    (["--frames", "6"], "frames 6 is not of the form 4n+1; use 5 or 9"),
    (["--steps", "0"], "steps 0 must be an integer >= 1"),
    (["--guide-scale", "4,3,2"], "3 values but the model has 2 expert"),
    (["--boundary", "1.5"], "boundary 1.5 must lie strictly between 0 and 1"),
    (["--size", "64"], "size '64' is not WIDTH*HEIGHT"),
])
def test_a14b_input_refused_before_weights(a14b_dir, no_weight_reads, capsys, args, message):
    err = _run(capsys, "--ckpt-dir", str(a14b_dir), "--device", "cpu", *args)
    assert message in err


def test_ti2v_size_must_be_multiple_of_32(ti2v_dir, no_weight_reads, capsys):
    # spec §1.3: the Wan2.2 VAE (16x) and the 2x2 patch need multiples of 32
    err = _run(capsys, "--ckpt-dir", str(ti2v_dir), "--size", "1280*720", "--device", "cpu")
    assert "height 720 is not a multiple of 32; use 704 or 736" in err
    err = _run(capsys, "--ckpt-dir", str(ti2v_dir), "--boundary", "0.9", "--device", "cpu")
    assert "single-expert model" in err


def test_prompt_twice_or_missing(a14b_dir, no_weight_reads, capsys):
    assert "given twice" in _run(capsys, "--prompt", "x", "--ckpt-dir", str(a14b_dir))
    rc = cli.main(["generate", "--ckpt-dir", str(a14b_dir)])
    assert rc == 2 and "no prompt given" in capsys.readouterr().err


def _broken_copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _run_broken(capsys, ckpt, tmp_path) -> str:
    return _run(capsys, "--ckpt-dir", str(ckpt), *TINY_ARGS, "--out", str(tmp_path / "x.mp4"))


def test_missing_file_is_named(a14b_dir, tmp_path, capsys):
    ckpt = _broken_copy(a14b_dir, tmp_path)
    (ckpt / "Wan2.1_VAE.pth").unlink()
    assert "Wan2.1_VAE.pth" in _run_broken(capsys, ckpt, tmp_path)
    assert not (tmp_path / "x.mp4").exists()


def test_corrupt_file_is_named(a14b_dir, tmp_path, capsys):
    ckpt = _broken_copy(a14b_dir, tmp_path)
    shard = ckpt / "low_noise_model" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(b"\x00garbage, not a safetensors file" * 4)
    assert "diffusion_pytorch_model-00001-of-00002.safetensors" in _run_broken(capsys, ckpt, tmp_path)


def test_shard_listed_but_absent(a14b_dir, tmp_path, capsys):
    ckpt = _broken_copy(a14b_dir, tmp_path)
    (ckpt / "high_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    assert "diffusion_pytorch_model-00002-of-00002.safetensors" in _run_broken(capsys, ckpt, tmp_path)


def test_shape_contradicting_config_is_named(a14b_dir, tmp_path, capsys):
    ckpt = _broken_copy(a14b_dir, tmp_path)
    cfg_path = ckpt / "high_noise_model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["ffn_dim"] = 96  # the stored FFN weights are [64, 32]
    cfg_path.write_text(json.dumps(cfg))
    err = _run_broken(capsys, ckpt, tmp_path)
    assert "ffn" in err and "96" in err and "64" in err


def test_no_checkpoint_and_no_demo_model(monkeypatch, tmp_path, capsys):
    import wanmoe.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEMO_DIR", tmp_path / "not-installed")
    err = _run(capsys, "--device", "cpu")
    assert "demo model is not installed" in err and "--ckpt-dir" in err
