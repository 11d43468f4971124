"""Tiny checkpoint writers shared by the loading/detection tests (checked in test_loading_builders.py).

Official-name tensors come from our own modules; diffusers and HF layouts are written by
diffusers' `WanTransformer3DModel` / `AutoencoderKLWan` and transformers' `UMT5EncoderModel`,
so the foreign names are independent of our rename tables. A plain module (not a conftest):
test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from helpers_dit import diffusers_kwargs
from safetensors.torch import save_file

from wanmoe.configs import T2V_A14B, TI2V_5B, DiTConfig, T5Config, VAEConfig, preset_to_dict

TINY_DIT = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, freq_dim=8)
TINY_T5 = T5Config(vocab_size=64, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=2)
TINY_VAE21 = VAEConfig(version="2.1", dim=8, dec_dim=8, z_dim=4, mean=(0.0,) * 4, std=(1.0,) * 4)
TINY_VAE22 = VAEConfig(version="2.2", dim=8, dec_dim=12, z_dim=4, mean=(0.0,) * 4, std=(1.0,) * 4)
LINEAR = re.compile(r"^blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.weight$|^blocks\.\d+\.ffn\.[02]\.weight$")


def _random_state(module: torch.nn.Module, seed: int, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Seeded standard-normal tensor per state-dict entry of a (meta-built) module."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        t = torch.randn(v.shape, generator=g)
        out[k] = t if dtype is None else t.to(dtype)
    return out


def dit_state(cfg: DiTConfig = TINY_DIT, seed: int = 0) -> dict[str, torch.Tensor]:
    from wanmoe.models.dit import WanDiT

    with torch.device("meta"):
        m = WanDiT(cfg)
    return _random_state(m, seed)


def t5_state(cfg: T5Config = TINY_T5, seed: int = 1, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    from wanmoe.text.umt5 import UMT5Encoder

    with torch.device("meta"):
        m = UMT5Encoder(cfg)
    return _random_state(m, seed, dtype)


def vae_state(cfg: VAEConfig = TINY_VAE21, seed: int = 2) -> dict[str, torch.Tensor]:
    from wanmoe.vae import build_vae

    with torch.device("meta"):
        m = build_vae(cfg)
    return _random_state(m, seed)


def dit_config_json(cfg: DiTConfig) -> dict:
    """config.json as the official DiT folders record it (spec §8.2)."""
    return {"_class_name": "WanModel", "model_type": "t2v", "text_len": cfg.text_len, "in_dim": cfg.in_dim,
            "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "out_dim": cfg.out_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "eps": cfg.eps}


def write_sharded(folder: Path, sd: dict, config: dict | None, shards: int = 2) -> Path:
    """diffusers-style sharded set: diffusion_pytorch_model-0000k-of-0000n.safetensors + index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    weight_map = {}
    for k in range(shards):
        fname = f"diffusion_pytorch_model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n].contiguous() for n in names[k::shards]}
        save_file(part, folder / fname)
        weight_map.update({n: fname for n in part})
    idx = folder / "diffusion_pytorch_model.safetensors.index.json"
    idx.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return idx


def write_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def write_official_a14b(root: Path, cfg: DiTConfig = TINY_DIT) -> Path:
    write_sharded(root / "high_noise_model", dit_state(cfg, 10), dit_config_json(cfg))
    write_sharded(root / "low_noise_model", dit_state(cfg, 11), dit_config_json(cfg))
    torch.save(t5_state(), root / "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save(vae_state(TINY_VAE21), root / "Wan2.1_VAE.pth")
    write_tokenizer(root / "google" / "umt5-xxl")
    return root


def write_official_ti2v(root: Path, cfg: DiTConfig = TINY_DIT) -> Path:
    write_sharded(root, dit_state(cfg, 12), dit_config_json(cfg))
    torch.save(t5_state(), root / "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save(vae_state(TINY_VAE22), root / "Wan2.2_VAE.pth")
    write_tokenizer(root / "google" / "umt5-xxl")
    return root


def diffusers_transformer(cfg: DiTConfig = TINY_DIT, seed: int = 3):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()


def diffusers_vae(cfg: VAEConfig = TINY_VAE21, seed: int = 4):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    extra = {"is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
             "decoder_base_dim": cfg.dec_dim, "scale_factor_spatial": 16} if cfg.version == "2.2" else {}
    return AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim, latents_mean=list(cfg.mean),
                            latents_std=list(cfg.std), **extra).eval()


def hf_umt5(cfg: T5Config = TINY_T5, seed: int = 5):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    hf = UMT5Config(vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn,
                    num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
                    relative_attention_num_buckets=cfg.num_buckets, dropout_rate=0.0)
    return UMT5EncoderModel(hf).eval()


def write_diffusers(root: Path, two_experts: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.875}))
    diffusers_transformer(seed=3).save_pretrained(root / "transformer")
    if two_experts:
        diffusers_transformer(seed=6).save_pretrained(root / "transformer_2")
    hf_umt5().save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    diffusers_vae(TINY_VAE21 if two_experts else TINY_VAE22).save_pretrained(root / "vae")
    return root


def tiny_preset(two_experts: bool = True):
    base = T2V_A14B if two_experts else TI2V_5B
    return replace(base, dit=TINY_DIT, t5=TINY_T5, vae=TINY_VAE21 if two_experts else TINY_VAE22)


def write_wanmoe(root: Path, two_experts: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    preset = tiny_preset(two_experts)
    files = {}
    for i, e in enumerate(preset.experts):
        save_file(dit_state(seed=20 + i), root / f"{e.name}.safetensors")
        files[e.name] = f"{e.name}.safetensors"
    save_file(t5_state(), root / "text_encoder.safetensors")
    save_file(vae_state(preset.vae), root / "vae.safetensors")
    (root / "tokenizer.json").write_text("{}")
    files.update(text_encoder="text_encoder.safetensors", vae="vae.safetensors", tokenizer="tokenizer.json")
    meta = {"format": "wanmoe", "version": 1, "preset": preset_to_dict(preset), "files": files}
    (root / "wanmoe.json").write_text(json.dumps(meta))
    return root


def fp8_scaled_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI legacy fp8_scaled layout of an official DiT state: fp8 linears + scale_weight + marker."""
    out = {}
    for n, t in sd.items():
        if LINEAR.match(n):
            scale = t.abs().max() / 448.0  # e4m3fn max
            out[n] = (t / scale).to(torch.float8_e4m3fn)
            out[n.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[n] = t
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def comfy_quant_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI comfy_quant layout: fp8 linears + weight_scale + per-layer `comfy_quant` JSON bytes."""
    out = {}
    for n, t in sd.items():
        if LINEAR.match(n):
            base = n.removesuffix(".weight")
            scale = t.abs().max() / 448.0
            out[n] = (t / scale).to(torch.float8_e4m3fn)
            out[base + ".weight_scale"] = scale.reshape(())
            out[base + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                      dtype=torch.uint8)
        else:
            out[n] = t
    return out


def write_gguf_dit(path: Path) -> Path:
    """GGUF file of the tiny DiT with Q8_0 block linears and float tensors elsewhere."""
    from wanmoe.loading.gguf import write_gguf
    from wanmoe.runtime.quant.quantize import quantize_q8_0

    sd = dit_state()
    write_gguf(path, {n: quantize_q8_0(t) if LINEAR.match(n) else t for n, t in sd.items()})
    return path
