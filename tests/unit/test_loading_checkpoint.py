"""resolve_checkpoint on every folder layout, explicit files, and each validation error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from wanmoe.errors import CheckpointError
from wanmoe.loading.checkpoint import resolve_checkpoint
from wanmoe.loading.components import load_dit
from wanmoe.testing.small import (TINY_DIT, TINY_T5, TINY_VAE21, dit_state, tiny_preset, vae_state,
                                  write_diffusers, write_official_a14b, write_official_ti2v, write_wanmoe)


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return write_official_a14b(tmp_path_factory.mktemp("a14b") / "Wan2.2-T2V-A14B")


def _copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / src.name)


def test_official_a14b(a14b):
    spec = resolve_checkpoint(a14b)
    assert spec.layout == "official-dir-a14b" and spec.preset.name == "t2v-A14B"
    assert spec.experts == {"high_noise": a14b / "high_noise_model", "low_noise": a14b / "low_noise_model"}
    assert spec.text_encoder == a14b / "models_t5_umt5-xxl-enc-bf16.pth" and spec.vae == a14b / "Wan2.1_VAE.pth"
    assert spec.tokenizer == a14b / "google" / "umt5-xxl"
    assert spec.preset.dit == TINY_DIT and spec.preset.t5 == TINY_T5
    assert (spec.preset.vae.version, spec.preset.vae.z_dim, spec.preset.vae.dim) == ("2.1", 4, 8)
    assert spec.formats == {"high_noise": "official-sharded", "low_noise": "official-sharded",
                            "text_encoder": "single-file-official", "vae": "single-file-official"}
    assert spec.preset.boundary == 0.875  # the rest of the preset is the published A14B one


def test_official_ti2v(tmp_path):
    root = write_official_ti2v(tmp_path / "Wan2.2-TI2V-5B")
    spec = resolve_checkpoint(root)
    assert spec.layout == "official-dir-ti2v5b" and list(spec.experts) == ["dense"]
    assert spec.experts["dense"] == root and spec.vae == root / "Wan2.2_VAE.pth"
    assert spec.preset.name == "ti2v-5B" and spec.preset.vae.version == "2.2"


def test_diffusers_folder(tmp_path):
    root = write_diffusers(tmp_path / "Wan2.2-T2V-A14B-Diffusers")
    spec = resolve_checkpoint(root)
    assert spec.experts == {"high_noise": root / "transformer", "low_noise": root / "transformer_2"}
    assert spec.preset.dit == TINY_DIT  # from the diffusers config.json
    assert spec.formats["high_noise"] == "diffusers" and spec.formats["text_encoder"] == "hf-transformers"
    assert spec.formats["vae"] == "diffusers" and spec.preset.t5 == TINY_T5


def test_wanmoe_folder(tmp_path):
    root = write_wanmoe(tmp_path / "demo")
    spec = resolve_checkpoint(root)
    assert spec.preset == tiny_preset() and spec.experts["low_noise"] == root / "low_noise.safetensors"
    assert spec.tokenizer == root / "tokenizer.json"


def test_explicit_files_and_overrides(a14b, tmp_path):
    """Single files carry no config.json: heads = dim // 128 (every published Wan DiT)."""
    cfg = replace(TINY_DIT, dim=128, num_heads=1)
    hi, lo = tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors"
    save_file(dit_state(cfg, seed=1), hi)
    save_file(dit_state(cfg, seed=2), lo)
    rest = {"vae": a14b / "Wan2.1_VAE.pth", "text_encoder": a14b / "models_t5_umt5-xxl-enc-bf16.pth",
            "tokenizer": a14b / "google" / "umt5-xxl"}
    spec = resolve_checkpoint(high=hi, low=lo, **rest)
    assert spec.layout == "files" and spec.preset.dit == cfg and spec.experts == {"high_noise": hi, "low_noise": lo}
    save_file(dit_state(seed=1), hi)  # dim 32: the head count cannot be inferred
    save_file(dit_state(seed=2), lo)
    with pytest.raises(CheckpointError, match="head count unknown"):
        resolve_checkpoint(high=hi, low=lo, **rest)
    torch.save(vae_state(TINY_VAE21, seed=9), tmp_path / "other_vae.pth")
    assert resolve_checkpoint(a14b, vae=tmp_path / "other_vae.pth").vae == tmp_path / "other_vae.pth"


def test_missing_file_is_named(a14b, tmp_path):
    root = _copy(a14b, tmp_path)
    (root / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(CheckpointError, match=r"vae file .*Wan2\.1_VAE\.pth does not exist"):
        resolve_checkpoint(root)
    shutil.rmtree(root / "google")
    torch.save(vae_state(), root / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match=r"tokenizer .*umt5-xxl does not exist"):
        resolve_checkpoint(root)


def test_dit_file_given_as_vae(a14b, tmp_path):
    save_file(dit_state(), tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(a14b, vae=tmp_path / "dit.safetensors")
    msg = str(e.value)
    assert "dit.safetensors" in msg and "(dit," in msg and "given as the vae" in msg and "expected a Wan VAE" in msg


def test_t5_file_given_as_vae(a14b):
    t5 = a14b / "models_t5_umt5-xxl-enc-bf16.pth"
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(a14b, vae=t5)
    msg = str(e.value)
    assert "models_t5_umt5-xxl-enc-bf16.pth" in msg and "given as the vae" in msg and "expected a Wan VAE" in msg


def test_vae_given_as_text_encoder(a14b):
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth is Wan2\.1 VAE .*text encoder"):
        resolve_checkpoint(a14b, text_encoder=a14b / "Wan2.1_VAE.pth")


def test_z_dim_mismatch_names_both(a14b, tmp_path):
    cfg = replace(TINY_VAE21, z_dim=8, mean=(0.0,) * 8, std=(1.0,) * 8)
    torch.save(vae_state(cfg), tmp_path / "z8.pth")
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(a14b, vae=tmp_path / "z8.pth")
    msg = str(e.value)
    assert "z8.pth" in msg and "z_dim 8" in msg and "high_noise_model" in msg and "in_dim 4" in msg


def test_experts_of_different_models(a14b, tmp_path):
    save_file(dit_state(replace(TINY_DIT, num_layers=3)), tmp_path / "low.safetensors")
    with pytest.raises(CheckpointError, match="experts are different models"):
        resolve_checkpoint(a14b, low=tmp_path / "low.safetensors")


def test_single_expert_is_refused(a14b):
    with pytest.raises(CheckpointError, match="needs both --high and --low"):
        resolve_checkpoint(high=a14b / "high_noise_model", vae=a14b / "Wan2.1_VAE.pth",
                           text_encoder=a14b / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer=a14b / "google" / "umt5-xxl")


def test_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a known checkpoint folder"):
        resolve_checkpoint(tmp_path / "empty")


def test_shape_contradicting_config_json(a14b, tmp_path):
    root = _copy(a14b, tmp_path)
    cfg_path = root / "high_noise_model" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["ffn_dim"] = 96
    cfg_path.write_text(json.dumps(cfg))
    (root / "low_noise_model" / "config.json").write_text(json.dumps(cfg))
    spec = resolve_checkpoint(root)
    assert spec.preset.dit.ffn_dim == 96  # config.json is the architecture; the weights must agree
    with pytest.raises(CheckpointError) as e:
        load_dit(spec.experts["high_noise"], spec.preset.dit, torch.float32)
    msg = str(e.value)
    assert "'blocks.0.ffn.0." in msg and "diffusion_pytorch_model-0000" in msg  # tensor and shard
    assert "[64" in msg and "[96" in msg  # both shapes


def test_a14b_expert_alone_is_not_a_dense_model(a14b, manifests_dir, monkeypatch):
    """A full-size A14B expert (shape-only entries from the manifest) given as the whole model."""
    from wanmoe.loading import checkpoint as ck
    from wanmoe.loading.detect import detect_tensors

    m = json.loads((manifests_dir / "official-wan22-t2v-a14b-dit.json").read_text())
    real = detect_tensors({t["name"]: (t["shape"], t["dtype"]) for t in m["tensors"]})
    orig = ck.detect_file
    monkeypatch.setattr(ck, "detect_file", lambda p: real if p.name == "expert.safetensors" else orig(p))
    save_file(dit_state(), a14b.parent / "expert.safetensors")
    with pytest.raises(CheckpointError, match="one expert of the two-expert A14B"):
        resolve_checkpoint(a14b.parent / "expert.safetensors", vae=a14b / "Wan2.1_VAE.pth",
                           text_encoder=a14b / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer=a14b / "google" / "umt5-xxl")
