"""`wanmoe inspect FILE` on LoRA files of every layout: layout, rank, alpha, targets, naming."""

import json

import pytest
import torch
from helpers_lora import LAYOUTS, block_modules, lora_factors, write_layout
from safetensors.torch import save_file

from wanmoe import cli
from wanmoe.testing.tiny import dit_state, tiny_dit_config

CFG = tiny_dit_config(16)  # dim 256, 2 blocks
FAMILY = {"diffusers": "diffusers/PEFT", "comfy_AB": "comfy/non-diffusers",
          "comfy_down_up": "comfy/non-diffusers", "comfy_model": "comfy/non-diffusers",
          "musubi": "musubi/kohya", "lycoris": "lycoris", "peft_official": "peft",
          "peft_diffusers": "peft", "bare": "bare"}
# which block linears each file covers: attention only (q, k, v, o of both), 16 layers
MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
           "cross_attn.k", "cross_attn.v", "cross_attn.o")


@pytest.fixture(scope="module")
def state():
    return dit_state(CFG, 0)


def inspect(capsys, path, *flags):
    assert cli.main(["inspect", str(path), *flags]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout(tmp_path, capsys, state, layout):
    alpha = None if layout == "musubi" else 8.0
    factors = lora_factors(state, block_modules(CFG.num_layers, MODULES), rank=4, seed=1)
    path = tmp_path / f"{layout}_low_noise.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.dim() else v for k, v in write_layout(factors, layout, alpha).items()},
              str(path))
    text = inspect(capsys, path)
    assert "format:    LoRA" in text
    assert f"layout:    {FAMILY[layout]} (prefix " in text
    assert "rank:      4\n" in text
    assert ("alpha:     8\n" in text) if alpha else ("alpha:     none (alpha = rank" in text)
    assert "targets:   16 layers: cross_attn 8, self_attn 8\n" in text
    assert "blocks:    0-1 (2)" in text and "model:     unknown (dim 256)" in text
    assert "expert:    low_noise (from the file name; apply with --lora-low)" in text
    naming = LAYOUTS[layout][3]
    assert f"names:     {naming} module names" in text
    info = json.loads(inspect(capsys, path, "--json"))
    assert info["ranks"] == [4] and info["targets"] == 16 and info["naming"] == naming
    assert info["kinds"] == {"cross_attn": 8, "self_attn": 8} and info["dtypes"] == ["BF16"]


def test_mixed_ranks_full_deltas_and_a14b_width(tmp_path, capsys):
    # A14B-width factors for two layers (no weights of that size are needed: only the factors)
    g = torch.Generator().manual_seed(0)
    sd = {"diffusion_model.blocks.5.ffn.0.lora_down.weight": torch.randn(16, 5120, generator=g),
          "diffusion_model.blocks.5.ffn.0.lora_up.weight": torch.randn(13824, 16, generator=g),
          "diffusion_model.blocks.7.self_attn.q.lora_down.weight": torch.randn(32, 5120, generator=g),
          "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.randn(5120, 32, generator=g),
          "diffusion_model.blocks.7.self_attn.q.alpha": torch.tensor(16.0),
          "diffusion_model.blocks.7.norm3.diff_b": torch.zeros(5120),
          "diffusion_model.head.head.diff": torch.zeros(64, 5120)}
    path = tmp_path / "lightx2v.safetensors"
    save_file(sd, str(path))
    text = inspect(capsys, path)
    assert "rank:      16, 32\n" in text and "alpha:     16\n" in text
    assert "targets:   4 layers: ffn 1, head 1, norm 1, self_attn 1\n" in text
    assert "blocks:    5, 7 (2)" in text and "model:     Wan2.2 T2V-A14B (dim 5120)" in text
    assert "deltas:    diff x1, diff_b x1" in text
    assert "expert:    not named in the file name" in text


def test_checkpoint_is_not_taken_for_a_lora(tmp_path, capsys, state):
    path = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    text = inspect(capsys, path)
    assert "format:    LoRA" not in text and "component: dit" in text
