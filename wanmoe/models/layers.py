"""Building blocks of the Wan DiT: dtype-following linears, Wan norms, timestep sinusoid.

Precision model (spec §2.8): a layer computes in the dtype of its *input*. The DiT decides the
region dtype by casting activations; weights are cast to the input dtype on the fly, which is what
CUDA autocast does to fp32 parameters. A weight already stored in that dtype is used as is, so
bf16-stored and fp32-stored weights give bit-identical results. Quantised replacements swapped in
for `CastLinear` must keep the same contract: output dtype == input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# Sequence chunking of the per-token work (norms, modulation, projections, FFN, head) in the DiT:
# from CHUNK_THRESHOLD tokens per sample on, those run CHUNK_TOKENS tokens at a time, so their
# temporaries are chunk-sized instead of sequence-sized (docs/memory.md). Below the threshold
# (every tiny test model) the unchunked code runs: bit-identical to the reference numerics.
CHUNK_THRESHOLD = 8192
CHUNK_TOKENS = 4096


def token_spans(n: int, size: int) -> list[tuple[int, int]]:
    """[(start, end), ...] covering range(n) in steps of `size`."""
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def inference_only() -> bool:
    """True when no autograd graph is recorded: in-place updates and chunking are then safe."""
    return not torch.is_grad_enabled()


def modulated_norm(norm: nn.Module, x: torch.Tensor, scale: torch.Tensor,
                   shift: torch.Tensor) -> torch.Tensor:
    """`norm(x).float() * (1 + scale) + shift` (the DiT's modulated LayerNorm), updating the
    norm's fresh output in place when no autograd graph is recorded: the same ops in the same
    order, so the same bits, with one sequence-sized fp32 temporary instead of three."""
    h = norm(x).float()
    if not inference_only():
        return h * (1 + scale) + shift
    return h.mul_(1 + scale).add_(shift)


class CastLinear(nn.Linear):
    """nn.Linear that casts its weight and bias to the input's dtype (autocast-style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)


class CastConv3d(nn.Conv3d):
    """nn.Conv3d that casts its weight and bias to the input's dtype (autocast-style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv3d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class WanRMSNorm(nn.Module):
    """RMSNorm over the full hidden size (official WanRMSNorm, used as q/k norm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    # CPU inference: rows normalised a block at a time (about this many elements, ~256 KB of
    # fp32), so each block's square, mean, scale and weight product run on data still in cache.
    # Every op is per row, so the values are the same bits as the whole-tensor ops.
    cpu_block_elements = 1 << 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Official order: normalise in fp32, cast back to x's dtype, then multiply by the weight
        # with ordinary type promotion (bf16 activations x fp32 weight -> fp32).
        d = x.shape[-1]
        if x.device.type == "cpu" and inference_only() and x.numel() > 2 * self.cpu_block_elements:
            return self._forward_blocked(x, max(1, self.cpu_block_elements // d))
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight

    def _forward_blocked(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty(flat.shape, dtype=torch.promote_types(x.dtype, self.weight.dtype), device=x.device)
        for i in range(0, flat.shape[0], rows):
            xf = flat[i:i + rows].float()
            y = xf * xf.pow(2).mean(dim=-1, keepdim=True).add_(self.eps).rsqrt_()
            torch.mul(y.type_as(x), self.weight, out=out[i:i + rows])
        return out.view(*x.shape[:-1], out.shape[-1])


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (official WanLayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class TanhGELU(nn.GELU):
    """GELU with the tanh approximation (official nn.GELU(approximate='tanh'))."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos | sin] timestep embedding computed in float64 (spec §2.2); returns float64 [n, dim]."""
    half = dim // 2
    pos = t.reshape(-1).to(torch.float64)
    omega = torch.pow(10000, -torch.arange(half, device=t.device, dtype=torch.float64).div(half))
    ang = torch.outer(pos, omega)  # [n, half]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


def xavier_uniform_(w: torch.Tensor) -> None:
    """Xavier-uniform on the flattened [out, in*...] view (the official patch-embedding init)."""
    fan_out, fan_in = w.shape[0], math.prod(w.shape[1:])
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        w.uniform_(-bound, bound)
