"""3-axis RoPE of the Wan DiT in float64 complex arithmetic (spec §2.4).

The multiplier table is built from the token grid instead of the official fixed [1024, hd/2]
table: the values are the same formula (angle = p * 10000^(-2j/D_a) per axis), so the bits
agree, and grids are not limited to 1024 positions per axis. Tables are cached per (grid,
split, seq_len, device) (`rope_table`): a run builds each once, not once per forward.

Two ways to rotate, bit-identical in eager mode (tests/unit/test_rope_cache.py):
* the complex128 table (default): one float64 copy of x, one in-place complex multiply, one
  copy back to float32, chunk by chunk (cache-sized chunks on the CPU);
* its real view [L, hd/2, 2] (cos, sin) in float64 (`torch.view_as_real(table)`): the same
  products and sums written out with real ops, which torch.compile's inductor can fuse (it does
  not lower complex dtypes). `rope_apply` picks the form from the table's dtype.
"""

from __future__ import annotations

import functools

import torch

# Rows rotated per step in `rope_apply`: bounds the float64 temporaries (~hd*N*8 bytes per row).
_CHUNK_TOKENS = 4096
# On the CPU the three passes of a chunk (to float64, multiply, back to float32) run on a block
# that stays in the core's L2 cache (64K elements = 512 KB of float64) instead of streaming the
# whole tensor through memory three times: 3.6x faster at 1280 tokens x 512 (one thread), same
# bits. GPUs keep the big chunks (fewer kernel launches).
_CPU_CHUNK_ELEMENTS = 1 << 16
# Tables kept by `rope_table` (an A14B 720P table is 77 MB; a run needs one per grid and device).
_CACHE_TABLES = 4


def axis_angles(n: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit complex128 multipliers [n, dim/2] for one axis of real width `dim` (positions 0..n-1)."""
    inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, device=device).to(torch.float64).div(dim))
    ang = torch.outer(torch.arange(n, device=device).to(torch.float64), inv)  # [n, dim/2]
    return torch.polar(torch.ones_like(ang), ang)


def build_rope_table(grid: tuple[int, int, int], split: tuple[int, int, int], seq_len: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Per-token complex128 multipliers [seq_len, hd/2] for a row-major (f,h,w) grid (uncached).

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


@functools.lru_cache(maxsize=_CACHE_TABLES)
def _cached_table(grid, split, seq_len, device) -> torch.Tensor:
    return build_rope_table(grid, split, seq_len, device)


def rope_table(grid: tuple[int, int, int], split: tuple[int, int, int], seq_len: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """`build_rope_table`, cached per (grid, split, seq_len, device). Shared: do not modify it."""
    dev = torch.device(device if device is not None else "cpu")
    return _cached_table(tuple(int(v) for v in grid), tuple(int(v) for v in split), int(seq_len), dev)


def clear_rope_cache() -> None:
    """Drop the cached tables (frees their memory)."""
    _cached_table.cache_clear()


def rope_apply(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, L, N, hd] by table in float64 -> float32.

    table: complex128 [L, hd/2] (`rope_table`) or its real view float64 [L, hd/2, 2].
    """
    if not table.is_complex():
        return _rope_apply_real(x, table)
    b, s, n, hd = x.shape
    out = torch.empty(b, s, n, hd, dtype=torch.float32, device=x.device)
    step = _CHUNK_TOKENS
    if x.device.type == "cpu":
        step = max(1, min(step, _CPU_CHUNK_ELEMENTS // (b * n * hd)))
    for i in range(0, s, step):
        j = min(s, i + step)
        xd = x[:, i:j].to(torch.float64, copy=True)  # always a copy (x may be float64): rotated in place
        xc = torch.view_as_complex(xd.view(b, j - i, n, hd // 2, 2))
        xc.mul_(table[i:j].view(1, j - i, 1, hd // 2))  # [B, l, N, hd/2] complex128 (autograd-safe)
        out[:, i:j].copy_(xd)
    return out


def _rope_apply_real(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The complex product written with real float64 ops: (a+bi)(c+si) = (ac - bs) + (as + bc)i,
    the order of torch's complex kernels, so the float32 results are the same bits."""
    b, s, n, hd = x.shape
    xd = x.to(torch.float64).unflatten(-1, (hd // 2, 2))
    a, bi = xd[..., 0], xd[..., 1]  # [B, L, N, hd/2]
    c, sn = table[None, :, None, :, 0], table[None, :, None, :, 1]  # [1, L, 1, hd/2]
    return torch.stack([a * c - bi * sn, a * sn + bi * c], dim=-1).flatten(3).to(torch.float32)
