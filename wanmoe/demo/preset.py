"""The built-in demo model: a tiny Wan2.2-architecture two-expert MoE trained on procedural clips.

Same code path as the real T2V-A14B (umT5 encoder -> high/low-noise DiT experts switched at
the boundary -> Wan2.2 VAE with patchify), only small: 128x128, 17 frames at 16 fps, latents
[16, 5, 8, 8] -> 80 DiT tokens. The VAE latent mean/std are per-channel statistics of the
trained VAE's latents over the training clips (written by `wanmoe train vae`).
"""

from __future__ import annotations

import dataclasses

from wanmoe.configs import DiTConfig, ExpertSpec, ModelPreset, T5Config, VAEConfig

Z_DIM = 16
TEXT_LEN = 32  # captions are < 30 tokens
TEXT_DIM = 64

# Per-channel statistics of the trained demo VAE's posterior means over 96 training clips
# (rounded to 6 digits; the exact float values are in assets/wanmoe.json).
DEMO_VAE_MEAN: tuple[float, ...] = (
    1.596323, 0.201262, -1.559978, 1.156055, 0.464173, -0.550666, -0.339426, 0.428715,
    0.433095, 1.143120, -1.250739, 1.343840, -0.569697, 0.475696, -0.996667, -0.996536)
DEMO_VAE_STD: tuple[float, ...] = (
    1.804916, 1.664400, 1.512533, 1.665981, 0.511951, 0.838875, 0.757608, 1.275106,
    0.863427, 1.180577, 1.729249, 1.649924, 0.794531, 1.207143, 1.283617, 1.912410)

DEMO_T5 = T5Config(vocab_size=192, dim=TEXT_DIM, dim_attn=TEXT_DIM, dim_ffn=128, num_heads=4,
                   num_layers=2, num_buckets=32, max_distance=128, text_len=TEXT_LEN)
DEMO_DIT = DiTConfig(dim=96, ffn_dim=256, num_heads=3, num_layers=4, in_dim=Z_DIM, out_dim=Z_DIM,
                     freq_dim=128, text_dim=TEXT_DIM, text_len=TEXT_LEN)


def demo_vae_config(mean: tuple[float, ...] = DEMO_VAE_MEAN,
                    std: tuple[float, ...] = DEMO_VAE_STD) -> VAEConfig:
    """Wan2.2 VAE (4x16x16, patchify 2) at a tiny width; mean/std default to the shipped stats."""
    return VAEConfig(version="2.2", dim=8, dec_dim=12, z_dim=Z_DIM, mean=tuple(mean),
                     std=tuple(std), dim_mult=(1, 2, 4, 4), num_res_blocks=1)


def demo_preset(vae: VAEConfig | None = None, dense: bool = False, patch: int = 2) -> ModelPreset:
    """The demo preset (two experts); `dense=True` gives the one-expert ablation twin; `patch`
    is the DiT's spatial patch (2 as in Wan2.2: 8x8 latents -> 4x4 tokens a frame; 1: 8x8)."""
    if patch not in (1, 2):
        raise ValueError(f"patch is {patch}; the demo DiT supports 1 or 2")
    experts = ((ExpertSpec("dense", 4.0),) if dense
               else (ExpertSpec("high_noise", 4.0), ExpertSpec("low_noise", 3.0)))
    return ModelPreset(
        name="demo-dense" if dense else "demo",
        dit=dataclasses.replace(DEMO_DIT, patch_size=(1, patch, patch)), vae=vae or demo_vae_config(),
        t5=DEMO_T5, experts=experts, boundary=None if dense else 0.875, shift=5.0, steps=20,
        frames=17, fps=16, size=(128, 128), sizes=((128, 128),),
    )


DEMO = demo_preset()
