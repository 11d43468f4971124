"""The one weight path of a linear layer: fetch -> dequantise -> cast -> patches.

Every linear that carries a runtime policy is a `WeightLinear`: its `dequantized(dtype, out)`
fetches the stored weight (a float tensor, GGUF blocks, fp8 or int8 with per-channel scales)
and returns it in the input's dtype (`DenseLinear` here, the quantised kinds in
`runtime.quant.linear`); `forward` runs the matmul and then adds the output of each patch in
`patches` (LoRA side branches: objects with `side(x)`). Quantisation, LoRA and (later) block
streaming compose through this one class instead of one layer type each.

The model's own `CastLinear` (models/layers.py) stays the plain layer; `as_weight_linear`
swaps one for a `DenseLinear` holding the same parameter objects (bit-identical outputs) when a
policy needs the path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightLinear(nn.Module):
    """Base of every runtime linear: bias handling, the forward, patches, the reference twin."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 workspace=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias, requires_grad=False)
        self.bias = bias  # kept as given (fp32 in the official layout), cast at use like nn.Linear
        self.workspace = workspace  # None: a fresh weight tensor per call (the fast-path switch)
        self.patches: list = []  # side branches, each with side(x) -> [..., out_features]

    def dequantized(self, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
        """The `[out, in]` weight in `dtype` (or written into `out`, whose dtype wins)."""
        raise NotImplementedError

    def _bias(self, dtype):
        return None if self.bias is None else self.bias.to(dtype)

    def _buffer(self, x: torch.Tensor) -> torch.Tensor | None:
        # A shared buffer is overwritten by the next layer: not usable when autograd saves the
        # weight for the backward pass (grad of x needs it).
        if self.workspace is None or (torch.is_grad_enabled() and x.requires_grad):
            return None
        return self.workspace.buffer((self.out_features, self.in_features), x.dtype, x.device)

    def with_patches(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y plus every patch's side branch, in list order."""
        for patch in self.patches:
            y = y + patch.side(x)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized(x.dtype, out=self._buffer(x))
        return self.with_patches(x, F.linear(x, w, self._bias(x.dtype)))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference twin: dequantise to float32, cast to the input dtype, plain F.linear."""
        w = self.dequantized(torch.float32).to(x.dtype)
        return self.with_patches(x, F.linear(x, w, self._bias(x.dtype)))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, patches={len(self.patches)}"


class DenseLinear(WeightLinear):
    """A float weight on the weight path (cast to the input dtype like `CastLinear`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)

    def dequantized(self, dtype, out=None):
        w = self.weight.to(dtype)
        return w if out is None else out.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_patches(x, F.linear(x, self.weight.to(x.dtype), self._bias(x.dtype)))


def as_weight_linear(module: nn.Module) -> WeightLinear:
    """`module` itself if it is on the weight path, else a DenseLinear sharing its parameters."""
    if isinstance(module, WeightLinear):
        return module
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{type(module).__name__} is not a linear layer")
    return DenseLinear(module.weight, module.bias)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (the build-then-swap pattern)."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def attach_patches(model: nn.Module, patches: dict[str, list]) -> int:
    """Put `patches[path]` on the linear at each path (swapped onto the weight path if needed),
    replacing what was there; returns the number of layers patched."""
    for path, plist in patches.items():
        layer = as_weight_linear(model.get_submodule(path))
        layer.patches = list(plist)
        set_module(model, path, layer)
    return len(patches)


def clear_patches(model: nn.Module) -> None:
    """Remove every patch (the layers stay on the weight path, with the base weights)."""
    for module in model.modules():
        if isinstance(module, WeightLinear):
            module.patches = []
