"""Masked attention in plain PyTorch: the model's default attention function and its reference.

`fn(q, k, v, k_lens=None)` with q [B, Lq, N, hd], k/v [B, Lk, N, hd]: keys (and values) at
positions >= k_lens[b] are excluded for sample b; queries are never masked; softmax scale
1/sqrt(hd); output [B, Lq, N, hd] in q's dtype. Inputs are used in the dtype given; the DiT
casts them to bf16 first in bf16 mode (the official flash-attn call, spec §2.7).

Every `WanAttention` module holds its function in `attn_fn` (default `attention_sdpa`); the
runtime replaces it per module (`wanmoe.runtime.attention.set_attention`), so there is no
process-wide switch. Faster backends (flash-attn) live in `wanmoe.runtime.attention`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def lens_list(k_lens: torch.Tensor | None, b: int, lk: int) -> list[int]:
    """Per-sample key lengths as Python ints (all `lk` when k_lens is None).

    k_lens lives on the CPU (the DiT and the runners make it there), so reading it is no
    host-device sync; a device tensor is read once per call (one sync each)."""
    if k_lens is None:
        return [lk] * b
    return [min(int(n), lk) for n in k_lens.tolist()]


# Tensors derived from key lengths, cached per (lengths, size, device): every block of every
# forward of a run asks for the same ones, and building them on a GPU is one host-to-device copy.
_CACHE_ENTRIES = 16


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _key_mask(lens: tuple[int, ...], lk: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(lk)[None, :] < torch.tensor(lens)[:, None]).to(device)  # one copy


def key_mask(lens: list[int] | tuple[int, ...], lk: int, device) -> torch.Tensor:
    """bool [B, Lk]: True where key j < lens[b] (cached; shared, do not modify)."""
    return _key_mask(tuple(int(n) for n in lens), int(lk), torch.device(device))


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _cu_seqlens(lens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor([0, *lens]).cumsum(0).to(torch.int32).to(device)


def cu_seqlens(lens: list[int] | tuple[int, ...], device) -> torch.Tensor:
    """int32 [B + 1] cumulative lengths (the varlen kernels' cu_seqlens), cached per device."""
    return _cu_seqlens(tuple(int(n) for n in lens), torch.device(device))


def attention_reference(q, k, v, k_lens=None):
    """Plain PyTorch attention: fp32 scores, explicit masked softmax, fp32 accumulation."""
    b, lq, n, hd = q.shape
    lk = k.shape[1]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, N, L, hd]
    scores = qf @ kf.transpose(-1, -2) * (1.0 / math.sqrt(hd))  # [B, N, Lq, Lk]
    if k_lens is not None:
        keep = torch.arange(lk, device=q.device)[None, :] < k_lens.to(q.device)[:, None]  # [B, Lk]
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf  # [B, N, Lq, hd]
    return out.transpose(1, 2).to(q.dtype)


def attention_sdpa(q, k, v, k_lens=None):
    """torch SDPA; equal key lengths are handled by slicing (no mask, so flash kernels stay usable)."""
    b, lq, n, hd = q.shape
    lens = lens_list(k_lens, b, k.shape[1])
    qt = q.transpose(1, 2)
    if len(set(lens)) == 1:
        kt, vt = k[:, : lens[0]].transpose(1, 2), v[:, : lens[0]].transpose(1, 2)
        out = F.scaled_dot_product_attention(qt, kt, vt)
    else:
        keep = key_mask(lens, k.shape[1], q.device)
        out = F.scaled_dot_product_attention(qt, k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
                                             attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2).to(q.dtype)
