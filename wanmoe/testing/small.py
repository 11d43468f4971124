"""The small fixed checkpoints of the loading and detection tests (names, shapes, round trips).

Widths far below the real ones (the DiT's head dim is 16, so its head count cannot be read from
shapes), plain standard-normal weights (`states.py`, `scaled=False`), a stub tokenizer. Each
writer is one call into `layouts.py` / `references.py` / `quantized.py` with these defaults; the
runnable tiny checkpoints of the end-to-end tests are in `tiny.py`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from wanmoe.configs import T2V_A14B, TI2V_5B, DiTConfig, ModelPreset, T5Config, VAEConfig
from wanmoe.testing import layouts, quantized, references, states
from wanmoe.testing.layouts import TOKENIZER_DIR, dit_config_json, write_sharded  # noqa: F401 (re-exported)
from wanmoe.testing.quantized import LINEAR, comfy_quant_state, fp8_scaled_state  # noqa: F401 (re-exported)

TINY_DIT = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, freq_dim=8)
TINY_T5 = T5Config(vocab_size=64, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=2)
TINY_VAE21 = VAEConfig(version="2.1", dim=8, dec_dim=8, z_dim=4, mean=(0.0,) * 4, std=(1.0,) * 4)
TINY_VAE22 = VAEConfig(version="2.2", dim=8, dec_dim=12, z_dim=4, mean=(0.0,) * 4, std=(1.0,) * 4)


def dit_state(cfg: DiTConfig = TINY_DIT, seed: int = 0) -> dict[str, torch.Tensor]:
    return states.dit_state(cfg, seed, scaled=False)


def t5_state(cfg: T5Config = TINY_T5, seed: int = 1, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    return states.t5_state(cfg, seed, dtype, scaled=False)


def vae_state(cfg: VAEConfig = TINY_VAE21, seed: int = 2) -> dict[str, torch.Tensor]:
    return states.vae_state(cfg, seed, scaled=False)


def tiny_preset(two_experts: bool = True) -> ModelPreset:
    base = T2V_A14B if two_experts else TI2V_5B
    return replace(base, dit=TINY_DIT, t5=TINY_T5, vae=TINY_VAE21 if two_experts else TINY_VAE22)


def write_official_a14b(root, cfg: DiTConfig = TINY_DIT) -> Path:
    """`Wan2.2-T2V-A14B/` (experts seeds 10 and 11)."""
    layouts.write_official_a14b(root, (dit_state(cfg, 10), dit_state(cfg, 11)), dit_config_json(cfg),
                                t5_state(), vae_state(TINY_VAE21))
    layouts.write_stub_tokenizer(Path(root) / TOKENIZER_DIR)
    return Path(root)


def write_official_ti2v(root, cfg: DiTConfig = TINY_DIT) -> Path:
    """`Wan2.2-TI2V-5B/` (DiT seed 12)."""
    layouts.write_official_ti2v5b(root, dit_state(cfg, 12), dit_config_json(cfg), t5_state(), vae_state(TINY_VAE22))
    layouts.write_stub_tokenizer(Path(root) / TOKENIZER_DIR)
    return Path(root)


def write_wanmoe(root, two_experts: bool = True) -> Path:
    """wanmoe-native folder of `tiny_preset` (experts seeds 20, 21)."""
    preset = tiny_preset(two_experts)
    parts = {e.name: dit_state(seed=20 + i) for i, e in enumerate(preset.experts)}
    parts.update(text_encoder=t5_state(), vae=vae_state(preset.vae))
    return layouts.write_wanmoe_folder(root, preset, parts)


def diffusers_transformer(cfg: DiTConfig = TINY_DIT, seed: int = 3):
    return references.diffusers_transformer(cfg, seed)


def diffusers_vae(cfg: VAEConfig = TINY_VAE21, seed: int = 4):
    return references.diffusers_vae(cfg, seed)


def hf_umt5(cfg: T5Config = TINY_T5, seed: int = 5):
    return references.hf_umt5(cfg, seed)


def write_diffusers(root, two_experts: bool = True) -> Path:
    return references.write_diffusers(root, TINY_DIT, TINY_T5, TINY_VAE21 if two_experts else TINY_VAE22,
                                      two_experts)


def write_gguf_dit(path) -> Path:
    """GGUF file of `dit_state()` with Q8_0 block linears."""
    return quantized.write_gguf_dit(path, dit_state())
