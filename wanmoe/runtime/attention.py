"""Attention with per-sample key lengths: a plain-softmax reference and fast backends.

`attention(q, k, v, k_lens=None)` with q [B, Lq, N, hd], k/v [B, Lk, N, hd]: keys (and values)
at positions >= k_lens[b] are excluded for sample b; queries are never masked; softmax scale
1/sqrt(hd); output [B, Lq, N, hd] in q's input dtype. Inputs are used in the dtype given; the DiT
casts them to bf16 first in bf16 mode (the official flash-attn call, spec §2.7).

Backends: "reference" (explicit fp32 softmax), "sdpa" (torch scaled_dot_product_attention),
"flash" (flash-attn 3/2 varlen API, CUDA + fp16/bf16 only), "auto" (flash when usable, else sdpa).
Select with `set_attention_backend(name)` or, scoped, `with attention_backend(name): ...`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from wanmoe.errors import InputError

BACKENDS = ("auto", "reference", "sdpa", "flash")


class _BackendChoice:
    """Holds the process-wide attention backend name (mutated in place, never rebound)."""

    def __init__(self) -> None:
        self.name = "auto"


_CHOICE = _BackendChoice()


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {list(BACKENDS)}")
    return name


def set_attention_backend(name: str) -> None:
    """Select the backend used by `attention` when no `backend=` argument is given."""
    _CHOICE.name = _check_name(name)


def get_attention_backend() -> str:
    """Name of the currently selected backend ("auto" unless changed)."""
    return _CHOICE.name


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Context manager selecting a backend for the enclosed code, restoring the previous one."""
    prev = _CHOICE.name
    _CHOICE.name = _check_name(name)
    try:
        yield
    finally:
        _CHOICE.name = prev


@functools.cache  # an import probe: failed imports would otherwise re-scan sys.path on every call
def _flash_module():
    """flash-attn 3 (`flash_attn_interface`) or 2 (`flash_attn`) module, or None."""
    for mod in ("flash_attn_interface", "flash_attn"):
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    return None


def flash_available(q: torch.Tensor) -> bool:
    """Whether the flash backend can run on this tensor (CUDA, fp16/bf16, package importable)."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_module() is not None


def _lens_list(k_lens: torch.Tensor | None, b: int, lk: int) -> list[int]:
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
    lens = _lens_list(k_lens, b, k.shape[1])
    qt = q.transpose(1, 2)
    if len(set(lens)) == 1:
        kt, vt = k[:, : lens[0]].transpose(1, 2), v[:, : lens[0]].transpose(1, 2)
        out = F.scaled_dot_product_attention(qt, kt, vt)
    else:
        keep = torch.arange(k.shape[1], device=q.device)[None, :] < torch.tensor(lens, device=q.device)[:, None]
        out = F.scaled_dot_product_attention(qt, k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
                                             attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2).to(q.dtype)


def attention_flash(q, k, v, k_lens=None):
    """flash-attn varlen call as upstream: all queries, keys packed per sample up to k_lens."""
    mod = _flash_module()
    if mod is None or not q.is_cuda:
        raise InputError("attention backend 'flash' needs CUDA and the flash-attn package "
                         "(pip install flash-attn); use 'sdpa' or 'auto' instead")
    b, lq, n, hd = q.shape
    lens = _lens_list(k_lens, b, k.shape[1])
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    qp = q.to(half).reshape(b * lq, n, hd)
    kp = torch.cat([k[i, : lens[i]] for i in range(b)]).to(half)  # [sum(lens), N, hd]
    vp = torch.cat([v[i, : lens[i]] for i in range(b)]).to(half)
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0] + lens, device=q.device).cumsum(0).to(torch.int32)
    out = mod.flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, lq, max(lens),
                                     softmax_scale=1.0 / math.sqrt(hd), causal=False)
    if isinstance(out, tuple):  # flash-attn 3 may return (out, lse)
        out = out[0]
    return out.reshape(b, lq, n, hd).to(q.dtype)


def attention(q, k, v, k_lens=None, backend: str | None = None):
    """Masked attention dispatching to the selected backend (see module docstring)."""
    name = _check_name(backend or _CHOICE.name)
    if name == "auto":
        name = "flash" if flash_available(q) else "sdpa"
    if name == "reference":
        return attention_reference(q, k, v, k_lens)
    if name == "flash":
        return attention_flash(q, k, v, k_lens)
    return attention_sdpa(q, k, v, k_lens)
