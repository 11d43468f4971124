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

import math

import torch
import torch.nn.functional as F


def lens_list(k_lens: torch.Tensor | None, b: int, lk: int) -> list[int]:
    """Per-sample key lengths as Python ints (all `lk` when k_lens is None)."""
    if k_lens is None:
        return [lk] * b
    return [min(int(n), lk) for n in k_lens.tolist()]


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
        keep = torch.arange(k.shape[1], device=q.device)[None, :] < torch.tensor(lens, device=q.device)[:, None]
        out = F.scaled_dot_product_attention(qt, k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
                                             attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2).to(q.dtype)
