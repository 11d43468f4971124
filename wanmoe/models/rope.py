"""3-axis RoPE of the Wan DiT in float64 complex arithmetic (spec §2.4).

The multiplier table is built per call from the token grid instead of the official fixed
[1024, hd/2] table: the values are the same formula (angle = p * 10000^(-2j/D_a) per axis), so the
bits agree, and grids are not limited to 1024 positions per axis.
"""

from __future__ import annotations

import torch

# Rows rotated per step in `rope_apply`: bounds the float64 temporaries (~hd*N*16 bytes per row).
_CHUNK_TOKENS = 4096


def axis_angles(n: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit complex128 multipliers [n, dim/2] for one axis of real width `dim` (positions 0..n-1)."""
    inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, device=device).to(torch.float64).div(dim))
    ang = torch.outer(torch.arange(n, device=device).to(torch.float64), inv)  # [n, dim/2]
    return torch.polar(torch.ones_like(ang), ang)


def rope_table(grid: tuple[int, int, int], split: tuple[int, int, int], seq_len: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Per-token complex128 multipliers [seq_len, hd/2] for a row-major (f,h,w) grid.

    Rows past the grid's token count (sequence padding) are exactly 1 so padded tokens pass
    through unchanged, as in the official `rope_apply`.
    """
    f, h, w = grid
    parts = [axis_angles(n, d, device) for n, d in zip(grid, split)]
    tf = parts[0].view(f, 1, 1, -1).expand(f, h, w, -1)
    th = parts[1].view(1, h, 1, -1).expand(f, h, w, -1)
    tw = parts[2].view(1, 1, w, -1).expand(f, h, w, -1)
    table = torch.cat([tf, th, tw], dim=-1).reshape(f * h * w, -1)  # [n, hd/2]
    n = f * h * w
    if seq_len > n:
        pad = torch.ones(seq_len - n, table.shape[1], dtype=table.dtype, device=table.device)
        table = torch.cat([table, pad])
    return table


def rope_apply(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, L, N, hd] by table [L, hd/2] in float64 -> float32."""
    b, s, n, hd = x.shape
    out = torch.empty(b, s, n, hd, dtype=torch.float32, device=x.device)
    for i in range(0, s, _CHUNK_TOKENS):
        j = min(s, i + _CHUNK_TOKENS)
        xc = torch.view_as_complex(x[:, i:j].to(torch.float64).reshape(b, j - i, n, hd // 2, 2))
        rot = xc * table[i:j].view(1, j - i, 1, hd // 2)  # [B, l, N, hd/2] complex128
        out[:, i:j] = torch.view_as_real(rot).flatten(3)
    return out
