"""Wan2.2 VAE (z48, 4x16x16 with a 2x2 pixel patchify), used by TI2V-5B (spec §6.3).

Official `Wan2.2_VAE.pth` names: `encoder.downsamples.i.downsamples.j`, `decoder.upsamples.i.upsamples.j`.
The residual down/up stages add a parameter-free AvgDown3D / DupUp3D shortcut of their input.
"""

from __future__ import annotations

import torch
from torch import nn

from wanmoe.vae.base import CausalVideoVAE
from wanmoe.vae.blocks import AvgDown3D, CausalConv3d, DupUp3D, ResidualBlock, Resample, run_causal
from wanmoe.vae.cache import CausalCache
from wanmoe.vae.wan21 import head_block, middle_block

PATCH = 2


def patchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p]; channel c*p*p + r*p + q (r: w-offset, q: h-offset)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)  # [B, C, r, q, T, h, w]
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = PATCH, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact inverse of `patchify`; written into `out` ([B, C, T, H, W], any time stride) when given."""
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)  # [B, C, T, h, q, w, r]
    if out is not None:  # H and W of a frame are contiguous in out, so they split into a view
        out.view(b, cpp // (p * p), t, h, p, w, p).copy_(x)
        return out
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)


class DownResidualBlock(nn.Module):
    """Residual blocks (+ down-resample) plus an AvgDown3D shortcut of the block input."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, ft=2 if temporal else 1, fs=2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        return run_causal(self.downsamples, x, cache) + self.avg_shortcut(x)


class UpResidualBlock(nn.Module):
    """num_res_blocks+1 residual blocks (+ up-resample keeping C) plus a DupUp3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, ft=2 if temporal else 1, fs=2) if up else None
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks + 1):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", out_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        y = run_causal(self.upsamples, x, cache)
        if self.avg_shortcut is None:
            return y
        first = cache is None or cache.first_chunk  # whole clip or its first chunk: drop ft-1 frames
        return y + self.avg_shortcut(x, first)


class Encoder22(nn.Module):
    """Patchified input (12 ch) -> conv1 -> residual down stages -> middle -> head."""

    def __init__(self, dim: int, z2: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_downsample: tuple[bool, ...], in_dim: int = 3 * PATCH * PATCH):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        last = len(dim_mult) - 1
        self.downsamples = nn.ModuleList(
            DownResidualBlock(a, b, num_res_blocks, temporal=temporal_downsample[i] if i != last else False,
                              down=i != last)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.middle = middle_block(dims[-1])
        self.head = head_block(dims[-1], z2)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        x = run_causal(self.middle, x, cache)
        return run_causal(self.head, x, cache)


class Decoder22(nn.Module):
    """conv1 -> middle -> residual up stages -> head (12 ch, unpatchified by the caller)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_upsample: tuple[bool, ...], out_dim: int = 3 * PATCH * PATCH):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_block(dims[0])
        last = len(dim_mult) - 1
        self.upsamples = nn.ModuleList(
            UpResidualBlock(a, b, num_res_blocks, temporal=temporal_upsample[i] if i != last else False,
                            up=i != last)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.head = head_block(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_causal(self.middle, x, cache)
        for stage in self.upsamples:
            x = stage(x, cache)
        return run_causal(self.head, x, cache)


class WanVAE22(CausalVideoVAE):
    """Wan2.2 causal video VAE (encoder width `dim`, decoder width `dec_dim`) with a 2x2 patchify."""

    version = "2.2"
    encoder_cls = Encoder22
    decoder_cls = Decoder22

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        return patchify(video)

    def unpatchify(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return unpatchify(x, out=out)
