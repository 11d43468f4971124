"""umT5 encoder with the official Wan parameter names (spec §5.2).

T5 encoder, umT5 flavour: a separate relative-position table in every layer, no 1/sqrt(d) query
scaling, no sqrt(d) embedding scaling, gated tanh-GELU FFN, RMSNorm with an fp32 mean. The module
runs in its parameters' dtype with no autocast: bf16 parameters give the official bf16 semantics
(spec §5.3), fp32 parameters give exact comparisons. No buffers: it builds cleanly on the meta
device; the relative-position bucket indices are computed once per forward and shared by all
layers (each layer has its own bias table).

`set_matmul_upcast(True)` (off by default) computes the bf16 matmuls as fp32 GEMMs of the bf16
values, rounded back to bf16: the semantics of a bf16 GEMM with fp32 accumulation (products of
bf16 numbers are exact in fp32), only the summation order differs. CPUs without native bf16
(AVX2) run it several times faster than their bf16 kernels; the reference path stays the default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wanmoe.configs import T5Config


def relative_position_bucket(lq: int, lk: int, num_buckets: int = 32, max_distance: int = 128,
                             device=None) -> torch.Tensor:
    """Bidirectional T5 bucket of rel = key_pos - query_pos, int64 `[lq, lk]` (spec §5.2)."""
    rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
    half = num_buckets // 2
    bucket = (rel > 0).long() * half  # keys after the query use the upper half
    n = rel.abs()
    max_exact = half // 2
    # log-spaced buckets for n >= max_exact; ln in fp32 like the official code. The clamp only
    # avoids log(0) in entries the `where` below discards.
    n_large = n.clamp(min=max_exact)
    large = max_exact + (torch.log(n_large.float() / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(n < max_exact, n, large)


def _linear(layer: nn.Module, x: torch.Tensor, upcast: bool) -> torch.Tensor:
    # only hook-free layers: offload hooks keep their own forward
    if not upcast or x.dtype != torch.bfloat16 or layer._forward_pre_hooks or layer._forward_hooks:
        return layer(x)
    if type(layer) is nn.Linear:
        return F.linear(x.float(), layer.weight.float()).to(x.dtype)  # fp32-accumulated bf16 GEMM
    # a quantised linear on the weight path (GGUF / fp8 / int8, no patches): its bf16 weight,
    # the one its own forward would use, in the same fp32-accumulated GEMM
    if callable(getattr(layer, "dequantized", None)) and not getattr(layer, "patches", None) \
            and getattr(layer, "bias", None) is None:
        return F.linear(x.float(), layer.dequantized(torch.bfloat16).float()).to(x.dtype)
    return layer(x)


def _matmul(a: torch.Tensor, b: torch.Tensor, upcast: bool) -> torch.Tensor:
    if upcast and a.dtype == torch.bfloat16:
        return torch.matmul(a.float(), b.float()).to(a.dtype)
    return torch.matmul(a, b)


class T5RMSNorm(nn.Module):
    """T5 layer norm: no mean subtraction, no bias; the mean of squares in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)  # fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


class TanhGELU(nn.Module):
    """tanh-GELU as the explicit official formula, evaluated op by op in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5Attention(nn.Module):
    """Self-attention without query scaling; the additive bias carries positions and the mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.upcast = False  # see set_matmul_upcast
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        n, d = self.num_heads, self.head_dim
        up = self.upcast
        q = _linear(self.q, x, up).view(b, length, n, d).transpose(1, 2)  # [B, N, L, d]
        k = _linear(self.k, x, up).view(b, length, n, d).transpose(1, 2)
        v = _linear(self.v, x, up).view(b, length, n, d).transpose(1, 2)
        logits = _matmul(q, k.transpose(-1, -2), up) + bias  # [B, N, L, L], activation dtype
        attn = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        out = _matmul(attn, v, up).transpose(1, 2).reshape(b, length, n * d)
        return _linear(self.o, out, up)


class T5FeedForward(nn.Module):
    """Gated-GELU FFN: fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), TanhGELU())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)
        self.upcast = False  # see set_matmul_upcast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.upcast
        gate = self.gate[1](_linear(self.gate[0], x, up))
        return _linear(self.fc2, _linear(self.fc1, x, up) * gate, up)


class T5RelativeEmbedding(nn.Module):
    """Per-layer relative-position table `[num_buckets, heads]` (umT5: one in every block)."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, N, Lq, Lk]


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Official overflow guard: only fp16 activations holding an inf are clamped."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(min=-limit, max=limit)
    return x


class T5Block(nn.Module):
    """Pre-norm encoder block: x + Attn(norm1(x)), then x + FFN(norm2(x))."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = T5RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5RMSNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """x `[B, L, dim]`; buckets int64 `[L, L]` and masked bool `[B, 1, 1, L]` (padded keys) are
        computed once per encoder forward and shared by all blocks."""
        b, length, _ = x.shape
        # official order: zeros in the activation dtype, += this layer's bias table, masked keys -> finfo.min
        bias = x.new_zeros(b, self.attn.num_heads, length, length)
        bias += self.pos_embedding(buckets).to(x.dtype)
        bias.masked_fill_(masked, torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """umT5(-XXL) encoder; state-dict names equal `models_t5_umt5-xxl-enc-bf16.pth`."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5RMSNorm(cfg.dim, cfg.eps)

    def set_matmul_upcast(self, enabled: bool) -> None:
        """Run bf16 matmuls as fp32 GEMMs of the bf16 values (fast on CPUs without bf16 units)."""
        for module in self.modules():
            if isinstance(module, (T5Attention, T5FeedForward)):
                module.upcast = bool(enabled)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids, mask `[B, L]` int64 (mask 1 = real token) -> `[B, L, dim]` in the parameter dtype."""
        # the official encoder runs before the DiT's autocast region opens: never inherit one
        with torch.autocast(device_type=ids.device.type, enabled=False):
            x = self.token_embedding(ids)  # [B, L, dim]; no sqrt(d) scaling
            b, length = ids.shape
            keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(x.device) > 0
            masked = ~keep.view(b, 1, 1, length)  # padded keys, shared by every layer
            # bucket indices once per forward; each layer looks them up in its own table
            buckets = relative_position_bucket(length, length, self.cfg.num_buckets,
                                               self.cfg.max_distance, device=x.device)
            for block in self.blocks:
                x = block(x, buckets, masked)
            return self.norm(x)
