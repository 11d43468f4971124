"""Attention backends, set per attention module (no process-wide switch).

Contract of every backend: see `wanmoe.models.attention` (q [B, Lq, N, hd], k/v [B, Lk, N, hd],
key lengths k_lens, output in q's dtype). Backends: "reference" (explicit fp32 softmax),
"sdpa" (torch scaled_dot_product_attention, the model's default), "flash" (flash-attn 3/2
varlen API, CUDA + fp16/bf16 only), the kernels of `runtime.attention_tune.REGISTRY` by name
(fa3, fa2, cudnn, sdpa-flash, sdpa-efficient, sage), and "auto": on CUDA the fastest accurate
kernel measured once per shape (`attention_tune.AttentionAutotuner`, SageAttention only with
"auto+sage"); on CPU exactly "sdpa".

`set_attention(model, name)` installs a backend on every module of `model` that has an
`attn_fn` hook (the DiT's self- and cross-attention); `attention(q, k, v, k_lens, backend)` calls
one backend directly.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from wanmoe.errors import InputError
from wanmoe.models.attention import attention_reference, attention_sdpa, cu_seqlens, lens_list

from wanmoe.runtime.attention_tune import AUTO, AUTO_SAGE, REGISTRY, named_backend

BACKENDS = ("auto", "auto+sage", "reference", "sdpa", "flash") + tuple(n for n in REGISTRY if n != "sdpa")


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"attention backend {name!r} is unknown; choose one of {list(BACKENDS)}")
    return name


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


def attention_flash(q, k, v, k_lens=None):
    """flash-attn varlen call as upstream: all queries, keys packed per sample up to k_lens."""
    mod = _flash_module()
    if mod is None or not q.is_cuda:
        raise InputError("attention backend 'flash' needs CUDA and the flash-attn package "
                         "(pip install flash-attn); use 'sdpa' or 'auto' instead")
    b, lq, n, hd = q.shape
    lens = lens_list(k_lens, b, k.shape[1])
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    qp = q.to(half).reshape(b * lq, n, hd)
    kp = torch.cat([k[i, : lens[i]] for i in range(b)]).to(half)  # [sum(lens), N, hd]
    vp = torch.cat([v[i, : lens[i]] for i in range(b)]).to(half)
    cu_q, cu_k = cu_seqlens([lq] * b, q.device), cu_seqlens(lens, q.device)  # cached per shape
    out = mod.flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, lq, max(lens),
                                     softmax_scale=1.0 / math.sqrt(hd), causal=False)
    if isinstance(out, tuple):  # flash-attn 3 may return (out, lse)
        out = out[0]
    return out.reshape(b, lq, n, hd).to(q.dtype)


attention_auto = AUTO  # the measured choice on CUDA, `attention_sdpa` on CPU

_FUNCTIONS = {"auto": AUTO, "auto+sage": AUTO_SAGE, "reference": attention_reference,
              "sdpa": attention_sdpa, "flash": attention_flash,
              **{n: named_backend(n) for n in REGISTRY if n != "sdpa"}}


def backend_function(name: str):
    """The attention function of backend `name`."""
    return _FUNCTIONS[_check_name(name)]


def attention(q, k, v, k_lens=None, backend: str = "auto"):
    """Masked attention through backend `backend` (see the module docstring)."""
    return backend_function(backend)(q, k, v, k_lens)


def _slot(module: nn.Module) -> tuple[object, str]:
    """Where the attention function of `module` sits: `attn_fn`, or the `inner` of the innermost
    wrapper installed there (sequence parallel wraps the backend and must stay in place)."""
    holder, attr = module, "attn_fn"
    while hasattr(getattr(holder, attr), "inner"):
        holder, attr = getattr(holder, attr), "inner"
    return holder, attr


def set_attention(model: nn.Module, backend: str) -> int:
    """Install `backend` on every module of `model` with an `attn_fn` hook; returns how many."""
    fn = backend_function(backend)
    n = 0
    for module in model.modules():
        if hasattr(module, "attn_fn"):
            setattr(*_slot(module), fn)
            n += 1
    return n


@contextlib.contextmanager
def using_attention(model: nn.Module, backend: str) -> Iterator[nn.Module]:
    """`set_attention` for the enclosed code; every module gets its previous function back."""
    previous = [(*_slot(m), getattr(*_slot(m))) for m in model.modules() if hasattr(m, "attn_fn")]
    set_attention(model, backend)
    try:
        yield model
    finally:
        for holder, attr, fn in previous:
            setattr(holder, attr, fn)
