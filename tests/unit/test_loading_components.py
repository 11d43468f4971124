"""Component loaders on every layout (weights compared to the writer's), and `wanmoe inspect`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from wanmoe.errors import CheckpointError
from wanmoe.loading import inspect as insp
from wanmoe.loading.checkpoint import resolve_checkpoint
from wanmoe.loading.components import load_dit, load_text_encoder, load_vae
from wanmoe.loading.containers import open_tensors
from wanmoe.testing.small import (TINY_DIT, TINY_VAE21, TINY_VAE22, diffusers_transformer, diffusers_vae,
                                  dit_state, hf_umt5, t5_state, vae_state, write_official_a14b)


def _equal_state(model, sd, dtype=None):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        want = v if dtype is None else v.to(dtype)
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), k


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "model."])
def test_dit_official_and_prefixed(tmp_path, prefix):
    sd = dit_state()
    save_file({prefix + k: v.half() for k, v in sd.items()}, tmp_path / "d.safetensors")
    _equal_state(load_dit(tmp_path / "d.safetensors", TINY_DIT, torch.float32), {k: v.half() for k, v in sd.items()},
                 torch.float32)


def test_dit_diffusers_layout(tmp_path):
    """diffusers' own model writes the file; spot pairs from formats.md §1 must line up."""
    ref = diffusers_transformer()
    ref.save_pretrained(tmp_path / "transformer")
    m = load_dit(tmp_path / "transformer", TINY_DIT, torch.float32)
    d, o = ref.state_dict(), m.state_dict()
    pairs = {"blocks.1.norm3.weight": "blocks.1.norm2.weight", "head.modulation": "scale_shift_table",
             "blocks.0.modulation": "blocks.0.scale_shift_table", "head.head.weight": "proj_out.weight",
             "time_projection.1.weight": "condition_embedder.time_proj.weight",
             "blocks.1.ffn.0.weight": "blocks.1.ffn.net.0.proj.weight",
             "blocks.0.cross_attn.o.bias": "blocks.0.attn2.to_out.0.bias",
             "text_embedding.2.weight": "condition_embedder.text_embedder.linear_2.weight"}
    for official, diff in pairs.items():
        assert torch.equal(o[official], d[diff]), official
    assert len(o) == len(d) and sorted(t.numel() for t in o.values()) == sorted(t.numel() for t in d.values())


def test_text_encoder_official_pth_stays_bf16(tmp_path):
    sd = t5_state(dtype=torch.bfloat16)
    torch.save(sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    m = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", torch.bfloat16)
    _equal_state(m, sd)
    assert not m.training


def test_text_encoder_hf_folder(tmp_path):
    ref = hf_umt5()
    ref.save_pretrained(tmp_path / "text_encoder")
    m = load_text_encoder(tmp_path / "text_encoder", torch.float32)
    o, h = m.state_dict(), ref.state_dict()
    pairs = {"token_embedding.weight": "shared.weight", "blocks.1.ffn.gate.0.weight": "encoder.block.1.layer.1.DenseReluDense.wi_0.weight",
             "blocks.1.ffn.fc1.weight": "encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
             "blocks.0.ffn.fc2.weight": "encoder.block.0.layer.1.DenseReluDense.wo.weight",
             "blocks.1.pos_embedding.embedding.weight": "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
             "norm.weight": "encoder.final_layer_norm.weight", "blocks.0.attn.v.weight": "encoder.block.0.layer.0.SelfAttention.v.weight"}
    for official, hf in pairs.items():
        assert torch.equal(o[official], h[hf]), official


@pytest.mark.parametrize("cfg", [TINY_VAE21, TINY_VAE22], ids=["2.1", "2.2"])
def test_vae_official_and_diffusers(tmp_path, cfg):
    from wanmoe.loading.keymaps.vae import official_to_diffusers

    sd = vae_state(cfg)
    torch.save(sd, tmp_path / "vae.pth")
    _equal_state(load_vae(tmp_path / "vae.pth", cfg), sd)
    ref = diffusers_vae(cfg)
    ref.save_pretrained(tmp_path / "vae")
    m = load_vae(tmp_path / "vae")  # config from shapes
    d = ref.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, d[official_to_diffusers(k, cfg.version)]), k


def test_wrong_component_is_named(tmp_path):
    save_file(dit_state(), tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match=r"dit\.safetensors is .*\(dit, .*not a Wan VAE"):
        load_vae(tmp_path / "dit.safetensors")
    torch.save(vae_state(), tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match=r"vae\.pth is .*not a Wan DiT"):
        load_dit(tmp_path / "vae.pth", TINY_DIT)
    with pytest.raises(CheckpointError, match="Wan2.1 VAE but the config asks for a Wan2.2"):
        load_vae(tmp_path / "vae.pth", TINY_VAE22)


def test_whole_official_folder_loads(tmp_path):
    root = write_official_a14b(tmp_path / "A14B")
    spec = resolve_checkpoint(root)
    for name, path in spec.experts.items():
        m = load_dit(path, spec.preset.dit, torch.float32)
        with open_tensors(path) as src:
            _equal_state(m, {k: src.get(k) for k in src.keys()})
    _equal_state(load_text_encoder(spec.text_encoder, torch.bfloat16), t5_state())
    _equal_state(load_vae(spec.vae, spec.preset.vae), vae_state(TINY_VAE21))


def _cli(argv, capsys):
    parser = argparse.ArgumentParser()
    insp.register_cli(parser.add_subparsers())
    args = parser.parse_args(["inspect", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_inspect_text_and_json(tmp_path, capsys):
    root = write_official_a14b(tmp_path / "Wan2.2-T2V-A14B")
    text = insp.describe(root)
    assert "official-dir-a14b" in text and "[high_noise]" in text and "official-sharded" in text
    out = json.loads(_cli([str(root), "--json"], capsys))
    assert out["checkpoints"][0]["format"] == "official-dir-a14b"
    hi, lo = root / "high_noise_model", root / "low_noise_model"
    pair = json.loads(_cli([str(lo), str(hi), "--json"], capsys))
    assert pair["expert_roles"]["high_noise"] == str(hi) and pair["same_model"] is True
    text = _cli([str(hi), str(lo)], capsys)
    assert "high noise: " + str(hi) in text and "float32 x" in text


def test_inspect_estimate_never_crashes(tmp_path, capsys):
    save_file(dit_state(), tmp_path / "d.safetensors")
    out = _cli([str(tmp_path / "d.safetensors"), "--estimate"], capsys)
    assert "single-file-official" in out and len(out.splitlines()) > 5
