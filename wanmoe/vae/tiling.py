"""Spatial tiling for VAE decode: overlapping latent tiles blended with linear ramps.

Each tile runs through the whole time range with its own causal cache (tiles are independent),
so peak decoder memory scales with the tile area instead of the frame area. In an overlap of o
pixels the left/top tile's weight falls linearly (o-i-0.5)/o while the next one's rises (i+0.5)/o
(a partition of unity where two tiles meet); the output is the weight-normalised sum, which also
covers the rare spots where three tiles overlap. A single tile covering the latent has weight 1 and
reproduces the untiled decode exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wanmoe.errors import InputError


@dataclass(frozen=True)
class TileSpec:
    """Tile size and overlap, in latent pixels."""

    tile_latent_h: int
    tile_latent_w: int
    overlap_latent: int

    def __post_init__(self) -> None:
        if min(self.tile_latent_h, self.tile_latent_w) < 1:
            raise InputError(f"tile size {self.tile_latent_h}x{self.tile_latent_w} (latent HxW) must be >= 1")
        if not 0 <= 2 * self.overlap_latent < min(self.tile_latent_h, self.tile_latent_w):
            raise InputError(f"tile overlap {self.overlap_latent} must be >= 0 and less than half the "
                             f"tile size {self.tile_latent_h}x{self.tile_latent_w} (latent HxW)")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts covering [0, size) with neighbours overlapping by at least `overlap`."""
    if tile >= size:
        return [0]
    n = 1 + math.ceil((size - tile) / (tile - overlap))  # fewest tiles with step <= tile - overlap
    return [round(k * (size - tile) / (n - 1)) for k in range(n)]


def ramp_weights(starts: list[int], tile: int, size: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D pixel weights: linear ramps over the overlap with each neighbour, 1 elsewhere."""
    tile = min(tile, size)
    weights = []
    for k, s in enumerate(starts):
        w = torch.ones(tile * scale, dtype=torch.float32)
        if k > 0:
            o = (starts[k - 1] + tile - s) * scale
            w[:o] *= (torch.arange(o, dtype=torch.float32) + 0.5) / o
        if k + 1 < len(starts):
            o = (s + tile - starts[k + 1]) * scale
            w[tile * scale - o:] *= (o - torch.arange(o, dtype=torch.float32) - 0.5) / o
        weights.append(w)
    return weights


def tiled_decode_pixels(vae, z: torch.Tensor, spec: TileSpec, out: torch.Tensor | None = None,
                        chunked: bool = True) -> torch.Tensor:
    """Unclamped float32 pixels [B, 3, T, H, W] of `vae.decode_pixels`, computed tile by tile."""
    shape = vae._check_latent(z)
    vae._check_out(out, shape)
    out = torch.zeros(shape, dtype=torch.float32, device=z.device) if out is None else out.zero_()
    h, w = z.shape[3:]
    s = vae.cfg.stride[1]
    th, tw, ov = min(spec.tile_latent_h, h), min(spec.tile_latent_w, w), spec.overlap_latent
    ys, xs = tile_starts(h, th, ov), tile_starts(w, tw, ov)
    wy, wx = ramp_weights(ys, th, h, s), ramp_weights(xs, tw, w, s)
    wsum = torch.zeros(h * s, w * s, dtype=torch.float32, device=z.device)
    for y0, wyk in zip(ys, wy):
        for x0, wxk in zip(xs, wx):
            tile = vae.decode_pixels(z[:, :, :, y0:y0 + th, x0:x0 + tw], chunked=chunked)
            weight = (wyk[:, None] * wxk[None, :]).to(z.device)  # [th*s, tw*s]
            rows, cols = slice(y0 * s, (y0 + th) * s), slice(x0 * s, (x0 + tw) * s)
            out[:, :, :, rows, cols] += tile.mul_(weight)  # tile is a fresh buffer: weight it in place
            wsum[rows, cols] += weight
    return out.div_(wsum)
