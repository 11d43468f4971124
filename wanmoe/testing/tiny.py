"""Tiny random checkpoints written in the real release layouts (spec §8.1, formats.md §3).

Widths are tiny, but everything a loader reads is real: the official folder and file names, the
official `config.json` keys, a 2-shard safetensors set with its index, the umT5 `.pth` in bf16,
the VAE `.pth` in fp32, a trained `google/umt5-xxl/tokenizer.json`, and the diffusers layout
produced from them through the project's key maps. Channel counts are fixed by the VAE family
(z 16 for the Wan2.1 VAE / A14B, z 48 for the Wan2.2 VAE / TI2V-5B). The weights are
well-scaled (`states.py`), so the models run end to end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from wanmoe.configs import OFFICIAL_NEGATIVE_PROMPT, WAN21_VAE, WAN22_VAE, DiTConfig, T5Config, VAEConfig
from wanmoe.testing import layouts, states
from wanmoe.testing.layouts import (INDEX, SHARD, T5_FILE, TOKENIZER_DIR,  # noqa: F401 (re-exported)
                                    convert_to_diffusers_layout, convert_to_wanmoe_layout)

TEXT_DIM = 32  # tiny umT5 width == DiT text_dim

CORPUS = (
    "a red ball rolls to the right on a dark blue background",
    "a yellow square moves up on a black background",
    "a green circle bounces slowly across a white floor",
    "two blue triangles spin around each other in the night sky",
    "a cat walks along a wooden fence at sunset, cinematic lighting",
    "close-up of ocean waves crashing on black rocks, slow motion",
    "a small boat sails across a calm lake under a cloudy sky",
    "an astronaut rides a horse on the moon, high detail",
    OFFICIAL_NEGATIVE_PROMPT,
)


def tiny_dit_config(in_dim: int) -> DiTConfig:
    """2 layers, 2 heads of the official head dim 128 (RoPE split 44/42/42; GGUF files carry no
    head count and loaders assume dim // 128), official text_len and freq_dim."""
    return DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=in_dim, out_dim=in_dim,
                     text_dim=TEXT_DIM)


def tiny_t5_config(vocab_size: int) -> T5Config:
    return T5Config(vocab_size=vocab_size, dim=TEXT_DIM, dim_attn=TEXT_DIM, dim_ffn=64, num_heads=4,
                    num_layers=2)


def tiny_vae_config(version: str) -> VAEConfig:
    """Published family (stride, z, normalisation constants) with tiny widths."""
    return replace(WAN22_VAE, dim=8, dec_dim=16) if version == "2.2" else replace(WAN21_VAE, dim=8, dec_dim=8)


def dit_state(cfg: DiTConfig, seed: int) -> dict[str, torch.Tensor]:
    """Well-scaled float32 DiT weights."""
    return states.dit_state(cfg, seed)


def write_tokenizer(folder, vocab_size: int = 256) -> int:
    """google/umt5-xxl-style tokenizer folder built from `CORPUS` (the same file in every
    process: `fixed_unigram_tokenizer`); returns the vocabulary size."""
    from wanmoe.text.train_tokenizer import fixed_unigram_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = fixed_unigram_tokenizer(list(CORPUS), vocab_size)
    tok.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5TokenizerFast", "model_max_length": 512, "extra_ids": 0,
         "additional_special_tokens": [], **special}, indent=2))
    return tok.get_vocab_size()


def _text_and_vae(root: Path, vae_version: str, seed: int) -> tuple[dict, dict]:
    """Trained tokenizer (its vocabulary sizes the umT5), umT5 and VAE weights."""
    vocab = write_tokenizer(root / TOKENIZER_DIR)
    return (states.t5_state(tiny_t5_config(vocab), seed + 100),
            states.vae_state(tiny_vae_config(vae_version), seed + 200))


def write_tiny_official_a14b(root, seed: int = 0) -> Path:
    """Tiny `Wan2.2-T2V-A14B/` folder: two experts (different weights), umT5, Wan2.1 VAE."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_dit_config(WAN21_VAE.z_dim)
    experts = (dit_state(cfg, seed + 1), dit_state(cfg, seed + 2))
    t5, vae = _text_and_vae(root, "2.1", seed)
    return layouts.write_official_a14b(root, experts, layouts.dit_config_json(cfg, "t2v"), t5, vae)


def write_tiny_official_ti2v5b(root, seed: int = 0) -> Path:
    """Tiny `Wan2.2-TI2V-5B/` folder: one dense DiT at the root, umT5, Wan2.2 VAE."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_dit_config(WAN22_VAE.z_dim)
    dit = dit_state(cfg, seed + 1)
    t5, vae = _text_and_vae(root, "2.2", seed)
    return layouts.write_official_ti2v5b(root, dit, layouts.dit_config_json(cfg, "ti2v"), t5, vae)
