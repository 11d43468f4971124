"""`--offload blocks:N` on the tiny official A14B: latents bit-identical to a resident run.

On a CPU the streamed path runs with host memory as the device (every block is copied into a
ring slot before it runs), so these tests exercise the same code as a CUDA run, minus the
side stream and events.
"""

import pytest
import torch
from safetensors.torch import load_file

from wanmoe import cli
from wanmoe.pipeline import load_pipeline
from wanmoe.runtime.streaming import BlockStreaming

ARGS = ["--size", "64*64", "--frames", "5", "--steps", "2", "--device", "cpu", "--quiet", "--seed", "4"]


def _cli_latents(tmp_path, name, *extra):
    lat = tmp_path / f"{name}.safetensors"
    assert cli.main(["generate", "a red ball rolls", *ARGS, "--out", str(tmp_path / f"{name}.mp4"),
                     "--save-latents", str(lat), *extra]) == 0
    return load_file(str(lat))["latents"]


def test_cli_offload_modes_give_identical_latents(a14b_dir, tmp_path):
    src = ["--ckpt-dir", str(a14b_dir)]
    none = _cli_latents(tmp_path, "none", *src, "--offload", "none")
    assert torch.equal(_cli_latents(tmp_path, "blocks", *src, "--offload", "blocks:2"), none)
    assert torch.equal(_cli_latents(tmp_path, "expert", *src, "--offload", "expert"), none)


def test_cli_rejects_a_bad_block_count(a14b_dir, tmp_path, capsys):
    rc = cli.main(["generate", "x", "--ckpt-dir", str(a14b_dir), *ARGS, "--offload", "blocks:0",
                   "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "blocks:0" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["bf16", "fp8", "int8"])
def test_streamed_weight_formats_match_resident(a14b_dir, weights):
    # Same loaded weights, two placements: the resident run, then the blocks streamed (N=2).
    pipe = load_pipeline(a14b_dir, device="cpu", weights=weights, offload="none")
    kw = dict(size="64*64", frames=5, steps=2, seed=4, progress=False)
    ref = pipe.generate("a red ball rolls", **kw).latents
    pipe.placement = BlockStreaming(pipe.experts, torch.device("cpu"), 2)
    assert torch.equal(pipe.generate("a red ball rolls", **kw).latents, ref)


def test_gguf_experts_stream(a14b_dir, tmp_path):
    for role in ("high", "low"):
        assert cli.main(["convert", str(a14b_dir / f"{role}_noise_model"), "--to", "gguf-q8_0",
                         "--out", str(tmp_path / f"{role}.gguf")]) == 0
    src = ["--high", str(tmp_path / "high.gguf"), "--low", str(tmp_path / "low.gguf"),
           "--vae", str(a14b_dir / "Wan2.1_VAE.pth"),
           "--text-encoder", str(a14b_dir / "models_t5_umt5-xxl-enc-bf16.pth"),
           "--tokenizer", str(a14b_dir / "google" / "umt5-xxl")]
    resident = _cli_latents(tmp_path, "q8", *src, "--offload", "none")
    assert torch.equal(_cli_latents(tmp_path, "q8b", *src, "--offload", "blocks:2"), resident)
