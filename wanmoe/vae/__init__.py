"""Wan causal video VAEs: Wan2.1 (z16, 4x8x8) and Wan2.2 (z48, 4x16x16)."""

from __future__ import annotations

from wanmoe.configs import VAEConfig
from wanmoe.vae.base import CausalVideoVAE
from wanmoe.vae.cache import CausalCache
from wanmoe.vae.tiling import TileSpec
from wanmoe.vae.wan21 import WanVAE21
from wanmoe.vae.wan22 import WanVAE22

__all__ = ["CausalCache", "CausalVideoVAE", "TileSpec", "WanVAE21", "WanVAE22", "build_vae"]


def build_vae(cfg: VAEConfig) -> CausalVideoVAE:
    """The VAE module for a config (parameters follow the current default device, e.g. meta)."""
    if cfg.version == "2.1":
        return WanVAE21(cfg)
    if cfg.version == "2.2":
        return WanVAE22(cfg)
    raise ValueError(f"VAE version {cfg.version!r} is not one of '2.1', '2.2'")
