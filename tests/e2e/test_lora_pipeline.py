"""LoRAs and the Lightning preset through `wanmoe generate` and the Python API (tiny A14B)."""

import pytest
import torch
from helpers_lora import block_modules, lora_factors, write_layout
from safetensors.torch import load_file, save_file

from wanmoe import cli
from wanmoe.errors import InputError
from wanmoe.pipeline import load_pipeline
from wanmoe.testing.tiny import tiny_dit_config

ARGS = ["--size", "64*64", "--frames", "5", "--steps", "3", "--device", "cpu", "--quiet",
        "--seed", "4"]
PROMPT = "a red ball rolls to the right"


def _expert_state(a14b_dir, role):
    state = {}
    for f in sorted((a14b_dir / f"{role}_noise_model").glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@pytest.fixture(scope="module")
def lora_files(a14b_dir, tmp_path_factory):
    """A rank-4 LoRA for each expert on every block linear, in two different layouts."""
    folder = tmp_path_factory.mktemp("loras")
    n = tiny_dit_config(16).num_layers
    files = {}
    for role, layout, seed in (("high", "comfy_down_up", 1), ("low", "diffusers", 2)):
        factors = lora_factors(_expert_state(a14b_dir, role), block_modules(n), 4, seed)
        files[role] = folder / f"{role}.safetensors"
        save_file(write_layout(factors, layout, alpha=2.0), str(files[role]))
    return files


def _run(a14b_dir, tmp_path, name, *extra):
    out = tmp_path / f"{name}.safetensors"
    assert cli.main(["generate", PROMPT, "--ckpt-dir", str(a14b_dir), *ARGS, "--out",
                     str(tmp_path / f"{name}.mp4"), "--save-latents", str(out), *extra]) == 0
    return load_file(str(out))["latents"]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_merge_and_runtime_agree_and_strength_zero_is_no_lora(a14b_dir, lora_files, tmp_path):
    pair = ["--lora-high", f"{lora_files['high']}:0.8", "--lora-low", str(lora_files["low"])]
    base = _run(a14b_dir, tmp_path, "base")
    merged = _run(a14b_dir, tmp_path, "merged", *pair)
    runtime = _run(a14b_dir, tmp_path, "runtime", *pair, "--lora-mode", "runtime")
    zero = _run(a14b_dir, tmp_path, "zero", "--lora", f"{lora_files['high']}:0")
    assert _rel(merged, base) > 1e-3  # the LoRAs change the video
    # Merge = W + dW rounded once; runtime = x W^T + (x down^T) up^T: equal up to fp32 rounding
    # (measured 1.5e-6 relative on the latents after 3 steps).
    assert _rel(runtime, merged) < 1e-4
    assert torch.equal(zero, base)


def test_set_loras_swaps_without_reloading(a14b_dir, lora_files, tmp_path):
    ref = _run(a14b_dir, tmp_path, "rt", "--lora-high", f"{lora_files['high']}:0.8",
               "--lora-low", str(lora_files["low"]), "--lora-mode", "runtime")
    pipe = load_pipeline(a14b_dir, device="cpu")
    kw = dict(size="64*64", frames=5, steps=3, seed=4, progress=False)
    plain = pipe.generate(PROMPT, **kw).latents
    pipe.set_loras(high=[(str(lora_files["high"]), 0.8)], low=[f"{lora_files['low']}"])
    assert torch.equal(pipe.generate(PROMPT, **kw).latents, ref)
    pipe.set_loras()  # no LoRAs again: the base weights were never touched
    assert torch.equal(pipe.generate(PROMPT, **kw).latents, plain)


def test_lora_errors_before_loading(a14b_dir, lora_files, tmp_path, capsys):
    bad = tmp_path / "unrelated.safetensors"
    save_file({"something.else.lora_A.weight": torch.zeros(2, 3),
               "something.else.lora_B.weight": torch.zeros(3, 2)}, str(bad))
    for extra, words in ((["--lora", str(tmp_path / "missing.safetensors")], "does not exist"),
                         (["--lora", f"{lora_files['high']}:strong"], "not a number"),
                         (["--lora", str(bad)], "unrelated.safetensors")):
        rc = cli.main(["generate", PROMPT, "--ckpt-dir", str(a14b_dir), *ARGS,
                       "--out", str(tmp_path / "x.mp4"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err, err
    pipe = load_pipeline(a14b_dir, device="cpu", loras={"high_noise": [(str(lora_files["high"]), 1.0)]})
    with pytest.raises(InputError, match="merged"):
        pipe.set_loras()


def test_lightning_preset_is_four_forwards_on_the_lightning_grid(a14b_dir):
    pipe = load_pipeline(a14b_dir, device="cpu")
    seen = []
    for name, model in pipe.experts.items():
        model.register_forward_pre_hook(
            lambda m, args, name=name: seen.append((name, args[1].reshape(-1)[0].item())))
    from wanmoe.sampling import PRESETS

    req = pipe.settings(size="64*64", frames=5, seed=3, **PRESETS["lightning"])
    res = pipe.generate(PROMPT, "blurry, static", settings=req, progress=False)
    # guidance 1.0: one forward per step even with a negative prompt; Lightning's float grid
    # (shift 5 on linspace(1, 0, 5)) and the t >= 875 switch: 2 high-noise + 2 low-noise steps
    assert [n for n, _ in seen] == ["high_noise"] * 2 + ["low_noise"] * 2
    assert [round(t, 2) for _, t in seen] == [1000.0, 937.5, 833.33, 625.0]
    assert res.expert_per_step == [n for n, _ in seen]


def test_cli_preset_lightning_and_explicit_flags_win(a14b_dir, tmp_path, capsys):
    assert cli.main(["generate", PROMPT, "--ckpt-dir", str(a14b_dir), "--size", "64*64",
                     "--frames", "5", "--device", "cpu", "--quiet", "--preset", "lightning",
                     "--out", str(tmp_path / "l.mp4")]) == 0
    err = capsys.readouterr().err
    assert "4 steps" in err and "solver euler-lightning" in err
    assert cli.main(["generate", PROMPT, "--ckpt-dir", str(a14b_dir), "--size", "64*64",
                     "--frames", "5", "--device", "cpu", "--quiet", "--preset", "lightning",
                     "--steps", "2", "--out", str(tmp_path / "l2.mp4")]) == 0
    assert "2 steps" in capsys.readouterr().err
