"""Wan2.1 VAE (z16, 4x8x8), used by T2V-A14B (spec §6.2); official `Wan2.1_VAE.pth` names."""

from __future__ import annotations

import torch
from torch import nn

from wanmoe.vae.base import CausalVideoVAE
from wanmoe.vae.blocks import (AttentionBlock, CausalConv3d, ResidualBlock, Resample, RMSNorm, SiLU,
                               run_causal)
from wanmoe.vae.cache import CausalCache


def middle_block(dim: int) -> nn.Sequential:
    """Res(dim), Attn(dim), Res(dim): `middle.{0,1,2}` in both VAEs."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def head_block(dim: int, out_dim: int) -> nn.Sequential:
    """RMS_norm, SiLU, causal conv3: `head.{0,2}` in both VAEs."""
    return nn.Sequential(RMSNorm(dim), SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class Encoder21(nn.Module):
    """Flat `downsamples` list: per stage num_res_blocks residual blocks, then a down-resample."""

    def __init__(self, dim: int, z2: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_downsample: tuple[bool, ...], in_dim: int = 3):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        last = len(dim_mult) - 1
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(a, b))
                a = b
            if i != last:
                layers.append(Resample(b, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle_block(dims[-1])
        self.head = head_block(dims[-1], z2)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_causal(self.downsamples, x, cache)
        x = run_causal(self.middle, x, cache)
        return run_causal(self.head, x, cache)


class Decoder21(nn.Module):
    """Flat `upsamples` list: per stage num_res_blocks+1 residual blocks, then an up-resample (C -> C/2)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_upsample: tuple[bool, ...], out_dim: int = 3):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_block(dims[0])
        layers: list[nn.Module] = []
        last = len(dim_mult) - 1
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                a = a // 2  # the previous up-resample halved the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(a, b))
                a = b
            if i != last:
                layers.append(Resample(b, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = head_block(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_causal(self.middle, x, cache)
        x = run_causal(self.upsamples, x, cache)
        return run_causal(self.head, x, cache)


class WanVAE21(CausalVideoVAE):
    """Wan2.1 causal video VAE: encoder, conv1 (quant), conv2 (post-quant), decoder."""

    version = "2.1"
    encoder_cls = Encoder21
    decoder_cls = Decoder21
