"""Quantised linear layers (weight-only): GGUF blocks, scaled fp8, int8 per channel.

Each module keeps its weight quantised (on host and GPU) and dequantises it into the input's
dtype just before the matmul, so it follows the DiT's compute dtype (bf16 or fp32) exactly as
an `nn.Linear` would. Every module has a reference twin, `reference_forward` (plain
dequantise-then-`F.linear`, fresh tensors, no fast path); tests compare the two. The fast
path: layers given a `DequantWorkspace` dequantise into a buffer shared by all layers of the
same weight shape instead of allocating a weight-sized tensor per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wanmoe.runtime.quant.gguf_dequant import GGUFWeight, dequantize
from wanmoe.runtime.quant.quantize import FP8_MAX, quantize_fp8, quantize_int8
from wanmoe.runtime.weights import WeightLinear


class DequantWorkspace:
    """Reusable dequantisation buffers, one per weight shape, shared by many layers.

    Layers run one after another, so all layers of one weight shape can share a single buffer:
    a 40-block A14B expert then needs two or three weight-sized buffers instead of 400 copies.
    Buffers are kept for one (device, dtype) at a time: asking for another one (the model was
    moved, or the compute dtype changed) frees the old buffers instead of keeping both sets.
    Only for inference: a layer does not use it when autograd needs the weight afterwards.
    Use one workspace per CUDA stream that runs layers (buffers are reused in stream order).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._placement: tuple[torch.device, torch.dtype] | None = None

    def buffer(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        placement = (torch.device(device), dtype)
        if placement != self._placement:
            self._buffers.clear()
            self._placement = placement
        shape = tuple(shape)
        buf = self._buffers.get(shape)
        if buf is None:
            buf = self._buffers[shape] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        self._buffers.clear()
        self._placement = None


class _QuantLinear(WeightLinear):
    """A quantised weight on the one weight path (`runtime.weights.WeightLinear`)."""


class GGUFLinear(_QuantLinear):
    """Linear whose weight stays in GGUF blocks; dequantised per call into a workspace buffer."""

    def __init__(self, weight: GGUFWeight, bias: torch.Tensor | None = None,
                 workspace: DequantWorkspace | None = None) -> None:
        out_f, in_f = weight.shape
        super().__init__(in_f, out_f, bias, workspace)
        self.qtype = weight.qtype
        self.register_buffer("qweight", weight.data, persistent=False)  # uint8 [out, row_bytes]

    @property
    def gguf_weight(self) -> GGUFWeight:
        return GGUFWeight(self.qweight, self.qtype, (self.out_features, self.in_features))

    def dequantized(self, dtype, out=None):
        return dequantize(self.qweight, self.qtype, (self.out_features, self.in_features), dtype, out=out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", qtype={self.qtype}"


class _ChannelLinear(_QuantLinear):
    """Weight `q` in a one-byte dtype with a float32 scale per output channel: w = q * scale."""

    weight_dtype: torch.dtype

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 workspace: DequantWorkspace | None = None) -> None:
        out_f, in_f = weight.shape
        super().__init__(in_f, out_f, bias, workspace)
        if weight.dtype != self.weight_dtype or scale.numel() != out_f:
            raise ValueError(f"{type(self).__name__} needs a {self.weight_dtype} [out, in] weight and an "
                             f"[out, 1] scale, got {weight.dtype} {tuple(weight.shape)} and {tuple(scale.shape)}")
        # Same names and shapes as our fp8 safetensors layout: X.weight, X.weight_scale [out, 1].
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.float().reshape(out_f, 1))

    def dequantized(self, dtype, out=None):
        w = self.weight.float()  # [out, in]; the product is one float32 rounding into `dtype`
        if out is not None:
            return torch.mul(w, self.weight_scale, out=out)
        return (w * self.weight_scale).to(dtype)


class FP8Linear(_ChannelLinear):
    """float8_e4m3fn weight with a float32 scale per output channel (w = q * scale).

    Default: weight-only (dequantise, then a matmul in the input dtype) on any device.
    `use_scaled_mm=True` runs `torch._scaled_mm` on CUDA GPUs with fp8 tensor cores
    (compute capability >= 8.9), the input scaled to fp8 per tensor; elsewhere it falls back.
    """

    weight_dtype = torch.float8_e4m3fn

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 use_scaled_mm: bool = False, workspace: DequantWorkspace | None = None) -> None:
        super().__init__(weight, scale, bias, workspace)
        self.use_scaled_mm = use_scaled_mm

    @classmethod
    def from_linear(cls, linear: nn.Linear, use_scaled_mm: bool = False,
                    workspace: DequantWorkspace | None = None) -> "FP8Linear":
        q, scale = quantize_fp8(linear.weight)
        return cls(q, scale, linear.bias, use_scaled_mm, workspace)

    def _scaled_mm_ok(self, x: torch.Tensor) -> bool:
        if not (self.use_scaled_mm and x.is_cuda and x.dtype == torch.bfloat16):  # row-wise scaling: bf16 out
            return False
        if torch.cuda.get_device_capability(x.device) < (8, 9):
            return False
        return self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._scaled_mm_ok(x):
            return super().forward(x)
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        x_scale = (x2.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
        xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        scale_a = x_scale.expand(x2.shape[0], 1).contiguous()  # row-wise form of a per-tensor scale
        scale_b = self.weight_scale.view(1, -1)
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self._bias(x.dtype)
        return self.with_patches(x, y.reshape(*x.shape[:-1], self.out_features))


class Int8Linear(_ChannelLinear):
    """int8 weight with a float32 scale per output channel (weight-only: dequantise, matmul)."""

    weight_dtype = torch.int8

    @classmethod
    def from_linear(cls, linear: nn.Linear, workspace: DequantWorkspace | None = None) -> "Int8Linear":
        q, scale = quantize_int8(linear.weight)
        return cls(q, scale, linear.bias, workspace)
