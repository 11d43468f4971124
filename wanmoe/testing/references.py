"""Tiny models and folders written by the reference libraries themselves (diffusers, transformers).

Their foreign tensor names come from diffusers' `WanTransformer3DModel` / `AutoencoderKLWan` and
transformers' `UMT5EncoderModel`, independent of the project's rename tables. Test-only: the
libraries are imported when a function is called (`pip install wanmoe[test]`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wanmoe.configs import DiTConfig, T5Config, VAEConfig


def diffusers_kwargs(cfg: DiTConfig) -> dict:
    """`WanTransformer3DModel` arguments describing the same architecture as `cfg`."""
    return dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps)


def diffusers_transformer(cfg: DiTConfig, seed: int):
    """diffusers `WanTransformer3DModel` with its own seeded init."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()


def diffusers_vae(cfg: VAEConfig, seed: int):
    """diffusers `AutoencoderKLWan` (Wan2.1 or Wan2.2 flavour) with its own seeded init."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    extra = {"is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
             "decoder_base_dim": cfg.dec_dim, "scale_factor_spatial": 16} if cfg.version == "2.2" else {}
    return AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim, latents_mean=list(cfg.mean),
                            latents_std=list(cfg.std), **extra).eval()


def hf_umt5(cfg: T5Config, seed: int):
    """transformers `UMT5EncoderModel` with its own seeded init."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    hf = UMT5Config(vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn,
                    num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
                    relative_attention_num_buckets=cfg.num_buckets, dropout_rate=0.0)
    return UMT5EncoderModel(hf).eval()


def write_diffusers(root, dit: DiTConfig, t5: T5Config, vae: VAEConfig, two_experts: bool = True,
                    seeds: tuple[int, int, int, int] = (3, 6, 5, 4)) -> Path:
    """A `*-Diffusers` folder saved by diffusers / transformers (`save_pretrained`), stub tokenizer.

    seeds: transformer, transformer_2, text encoder, VAE.
    """
    from wanmoe.testing.layouts import write_stub_tokenizer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.875}))
    diffusers_transformer(dit, seeds[0]).save_pretrained(root / "transformer")
    if two_experts:
        diffusers_transformer(dit, seeds[1]).save_pretrained(root / "transformer_2")
    hf_umt5(t5, seeds[2]).save_pretrained(root / "text_encoder")
    write_stub_tokenizer(root / "tokenizer")
    diffusers_vae(vae, seeds[3]).save_pretrained(root / "vae")
    return root


class SolverScheduler:
    """A diffusers-scheduler face over a wanmoe solver (same timesteps, same step()), so that
    diffusers' `WanPipeline` can run our solver: the pipeline comparisons then differ only in
    the model code (tests/parity/test_pipeline_diffusers.py, benchmarks/bench_speed.py)."""

    order = 1

    def __init__(self, name: str, shift: float) -> None:
        from types import SimpleNamespace

        self.name, self.shift = name, shift
        self.config = SimpleNamespace(num_train_timesteps=1000)

    def set_timesteps(self, num_inference_steps, device=None):
        from wanmoe.sampling import make_solver

        self.solver = make_solver(self.name, num_inference_steps, self.shift)
        self.timesteps = self.solver.timesteps.to(device)
        self.sigmas = self.solver.sigmas

    def set_begin_index(self, begin_index=0):
        pass

    def step(self, model_output, timestep, sample, return_dict=False):
        return (self.solver.step(model_output[0], sample[0])[None],)
