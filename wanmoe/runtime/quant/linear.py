"""Quantised linear layers (weight-only): GGUF blocks, scaled fp8, int8 per channel.

Each module keeps its weight quantised (on host and GPU) and dequantises it into the input's
dtype just before the matmul, so it follows the DiT's compute dtype (bf16 or fp32) exactly as
an `nn.Linear` would. Every module has a reference twin, `reference_forward` (plain
dequantise-then-`F.linear`, fresh tensors, no fast path); tests compare the two. The fast
path: layers given a `DequantWorkspace` dequantise into a buffer shared by all layers of the
same weight shape instead of allocating a weight-sized tensor per call.
"""

from __future__ import annotations

import functools
import warnings

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


FP8_MATMUL = ("dequant", "scaled", "auto")  # --fp8-matmul: how an FP8Linear multiplies


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (per-token) fp8 activations: x [M, K] -> (float8_e4m3fn [M, K], float32 scale
    [M, 1]) with x ~ q * scale, each row's amax mapped to the largest finite e4m3 value (448)."""
    xf = x2.float()
    scale = (xf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def scaled_mm_emulated(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor,
                       w_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """What `torch._scaled_mm(xq, wq.t(), scale_a=x_scale [M,1], scale_b=w_scale [1,N])` computes,
    written out in float32 on any device: (xq @ wqᵀ) · x_scale · w_scale, one rounding."""
    return ((xq.float() @ wq.float().t()) * x_scale * w_scale.reshape(1, -1)).to(out_dtype)


@functools.cache
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def fp8_path(mode: str, device: torch.device, dtype: torch.dtype, in_features: int,
             out_features: int) -> str:
    """'scaled' or 'dequant' for one layer on one (device, input dtype): decided once per layer.

    auto: `torch._scaled_mm` with row-wise scales on CUDA GPUs with fp8 tensor cores (compute
    capability >= 8.9: Ada, Hopper, Blackwell) for bf16 inputs (row-wise scaling writes bf16),
    else dequantise + matmul. scaled: also torch's CPU kernel (slow; it checks the call), still
    the fallback where the device or shape has no kernel. dequant: always today's path.
    """
    if mode == "dequant" or in_features % 16 or out_features % 16 or not hasattr(torch, "_scaled_mm"):
        return "dequant"
    if device.type == "cuda":
        ok = dtype == torch.bfloat16 and _cuda_capability(device.index or 0) >= (8, 9)
        return "scaled" if ok else "dequant"
    if device.type == "cpu" and mode == "scaled" and dtype in (torch.float32, torch.bfloat16):
        return "scaled"
    return "dequant"


class FP8Linear(_ChannelLinear):
    """float8_e4m3fn weight with a float32 scale per output channel (w = q * scale).

    `matmul` (`--fp8-matmul`): "dequant" (default; weight-only: dequantise, then a matmul in the
    input dtype, any device), "auto" (`torch._scaled_mm` where the GPU has fp8 tensor cores,
    else dequant) or "scaled" (see `fp8_path`). The fp8 matmul quantises the activations per
    token (row-wise scales, `quantize_rows`) and uses the weight's per-channel scales as the
    column scales; the choice is made once per (device, dtype) on the first call. A kernel that
    refuses the call on first use (an unsupported shape) drops the layer to dequant, with a
    warning. `use_scaled_mm=True` is the old spelling of matmul="auto".
    """

    weight_dtype = torch.float8_e4m3fn

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 use_scaled_mm: bool = False, workspace: DequantWorkspace | None = None,
                 matmul: str | None = None) -> None:
        super().__init__(weight, scale, bias, workspace)
        self.matmul = matmul or ("auto" if use_scaled_mm else "dequant")
        self._paths: dict[tuple, str] = {}  # (device, dtype) -> "scaled" | "dequant"

    @property
    def matmul(self) -> str:
        return self._matmul

    @matmul.setter
    def matmul(self, mode: str) -> None:
        if mode not in FP8_MATMUL:
            raise ValueError(f"fp8 matmul {mode!r} is not one of {FP8_MATMUL}")
        self._matmul = mode
        self._paths = {}

    @property
    def use_scaled_mm(self) -> bool:
        return self._matmul != "dequant"

    @classmethod
    def from_linear(cls, linear: nn.Linear, use_scaled_mm: bool = False,
                    workspace: DequantWorkspace | None = None, matmul: str | None = None) -> "FP8Linear":
        q, scale = quantize_fp8(linear.weight)
        return cls(q, scale, linear.bias, use_scaled_mm, workspace, matmul)

    def path(self, x: torch.Tensor) -> str:
        """The matmul this layer runs for `x` ('scaled' | 'dequant'), chosen once per placement."""
        if torch.is_grad_enabled() and x.requires_grad:
            return "dequant"  # _scaled_mm has no backward
        key = (x.device, x.dtype)
        if key not in self._paths:
            self._paths[key] = fp8_path(self._matmul, x.device, x.dtype, self.in_features, self.out_features)
        return self._paths[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path(x) != "scaled":
            return super().forward(x)
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        xq, x_scale = quantize_rows(x2)
        try:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale.view(1, -1),
                                 out_dtype=x.dtype)
        except RuntimeError as e:  # a kernel that refuses this call: fall back for good
            warnings.warn(f"torch._scaled_mm refused a {tuple(x2.shape)} x {self.in_features}->"
                          f"{self.out_features} fp8 matmul on {x.device} ({str(e).splitlines()[0]}); "
                          f"this layer dequantises instead", RuntimeWarning, stacklevel=2)
            self._paths[(x.device, x.dtype)] = "dequant"
            return super().forward(x)
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
