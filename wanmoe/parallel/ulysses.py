"""Ulysses sequence parallel (spec §7.1), installed on a built DiT through its two hook points.

* `block_runner` wrapper: the token axis (`WanDiT.meta.sequence_dim`) of h, of e0 when it is
  per-token, and the rows of the RoPE table are padded to a multiple of U and split, so rank u
  holds tokens [u L'/U, (u+1) L'/U) between blocks; the previous runner (the default loop, block
  streaming, a timer, ...) runs the blocks on that shard; the shards are all-gathered after the
  last block and the padding dropped, so the head sees the full sequence as on one process.
* `attn_fn` wrapper on every self-attention: all-to-all [B, L'/U, N, hd] -> [B, L', N/U, hd]
  (all tokens, this rank's heads), the inner attention function (whatever backend was set)
  with the global key lengths, all-to-all back. Padded keys are masked through k_lens, so the
  result does not depend on U. Cross-attention keys are the text context, which every rank
  holds: no communication there.

Numerics: every token-wise op sees the same rows as on one process; attention sees the same
keys (padding masked). Differences are GEMM-shape ulps (measured in tests/parallel).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _pad_rows(x: torch.Tensor, dim: int, length: int, value: float = 0.0) -> torch.Tensor:
    """Pad x along dim to `length` with `value` (no copy when already that long)."""
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)], dim=dim)


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """x [U, ...] -> [U, ...]: chunk j goes to rank j, chunk j of the result came from rank j."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: torch.Tensor, u: int, group) -> torch.Tensor:
    """[B, L/U, N, hd] (local tokens, all heads) -> [B, L, N/U, hd] (all tokens, local heads)."""
    b, l_loc, n, hd = x.shape
    chunks = x.reshape(b, l_loc, u, n // u, hd).permute(2, 0, 1, 3, 4)  # [U, B, L/U, N/U, hd]
    got = _all_to_all(chunks, group)  # got[j]: rank j's tokens, my heads
    return got.permute(1, 0, 2, 3, 4).reshape(b, u * l_loc, n // u, hd)


def heads_to_seq(y: torch.Tensor, u: int, group) -> torch.Tensor:
    """[B, L, N/U, hd] (all tokens, local heads) -> [B, L/U, N, hd] (local tokens, all heads)."""
    b, length, nh, hd = y.shape
    chunks = y.reshape(b, u, length // u, nh, hd).permute(1, 0, 2, 3, 4)  # [U, B, L/U, N/U, hd]
    got = _all_to_all(chunks, group)  # got[j]: my tokens, rank j's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, length // u, u * nh, hd)


class UlyssesAttention:
    """attn_fn wrapper: all-to-all -> inner attention on all tokens, N/U heads -> all-to-all."""

    def __init__(self, inner, size: int, group) -> None:
        self.inner, self.size, self.group = inner, size, group

    def __call__(self, q, k, v, k_lens=None):
        u, g = self.size, self.group
        qf, kf, vf = (seq_to_heads(t, u, g) for t in (q, k, v))
        return heads_to_seq(self.inner(qf, kf, vf, k_lens), u, g)


class UlyssesRunner:
    """block_runner wrapper: split the sequence over the group, run `previous`, gather after."""

    def __init__(self, previous, size: int, rank: int, group, seq_dim: int = 1) -> None:
        self.previous, self.size, self.rank, self.group = previous, size, rank, group
        self.seq_dim = seq_dim

    def _shard(self, x: torch.Tensor, dim: int, length: int, value: float = 0.0) -> torch.Tensor:
        x = _pad_rows(x, dim, length, value)
        return x.narrow(dim, self.rank * (length // self.size), length // self.size).contiguous()

    def __call__(self, blocks, h, e0, context, rope, k_lens, lowp):
        d = self.seq_dim
        b, length = h.shape[0], h.shape[d]
        padded = -(-length // self.size) * self.size
        if padded != length and k_lens is None:  # the new rows are padding: mask them as keys
            k_lens = torch.full((b,), length, dtype=torch.long)
        h_loc = self._shard(h, d, padded)
        e0_loc = self._shard(e0, 1, padded) if e0.shape[1] > 1 else e0  # [B, L|1, 6, d]
        rope_loc = self._shard(rope, 0, padded, 1.0)  # identity rotation on padding rows
        out = self.previous(blocks, h_loc, e0_loc, context, rope_loc, k_lens, lowp)
        parts = [torch.empty_like(out) for _ in range(self.size)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=d).narrow(d, 0, length)


def install_ulysses(model, size: int, rank: int, group) -> UlyssesRunner:
    """Install Ulysses on a WanDiT (wrapping its current runner and self-attention functions)."""
    heads_attr = model.meta.heads_attr
    for block in getattr(model, model.meta.repeated):
        attn = block.self_attn
        if getattr(attn, heads_attr) % size:
            raise ValueError(f"{getattr(attn, heads_attr)} heads are not divisible by Ulysses {size}")
        attn.attn_fn = UlyssesAttention(attn.attn_fn, size, group)
    runner = UlyssesRunner(model.block_runner, size, rank, group, model.meta.sequence_dim)
    model.block_runner = runner
    return runner


def remove_ulysses(model) -> None:
    """Undo `install_ulysses` (restores the wrapped runner and attention functions)."""
    for block in getattr(model, model.meta.repeated):
        if isinstance(block.self_attn.attn_fn, UlyssesAttention):
            block.self_attn.attn_fn = block.self_attn.attn_fn.inner
    if isinstance(model.block_runner, UlyssesRunner):
        model.block_runner = model.block_runner.previous
