"""Swap a DiT's block linears for quantised ones; install GGUF / fp8 weights during a load.

Which tensors are quantised follows spec formats.md §4 and the official fp32 regions
(wan22.md §2.8): only the q/k/v/o projections of self- and cross-attention and the two FFN
linears of every block. Modulation tables, patch/text/time embeddings, time_projection, the
head, norms and all biases stay in high precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from wanmoe.errors import CheckpointError, InputError
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.quant.gguf_dequant import GGUFWeight
from wanmoe.runtime.quant.linear import DequantWorkspace, FP8Linear, GGUFLinear, Int8Linear, _QuantLinear
from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_int8
from wanmoe.runtime.weights import as_weight_linear, set_module

MODES = ("bf16", "fp8", "int8", "keep")
# Official names of the block linears that are quantised (module paths, no ".weight"): the
# DiT's own metadata (`WanDiT.meta.quantisable`), the one source of truth.
BLOCK_LINEAR_RE = WanDiT.meta.quantisable


@dataclass
class FP8Weight:
    """Our scaled-fp8 tensor pair (`X.weight` float8_e4m3fn + `X.weight_scale` fp32 [out, 1])."""

    weight: torch.Tensor
    scale: torch.Tensor

    def to(self, device) -> "FP8Weight":
        return FP8Weight(self.weight.to(device), self.scale.to(device))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """w = weight * scale in float32 (ComfyUI's rule), one rounding into `dtype`."""
        return (self.weight.float() * self.scale.reshape(-1, 1)).to(dtype)


def is_block_linear(module_name: str) -> bool:
    """True for the module paths `quantize_model` swaps (e.g. `blocks.3.ffn.2`)."""
    return BLOCK_LINEAR_RE.match(module_name) is not None


def is_block_weight(name: str, shape) -> bool:
    """True for the 2-D `.weight` tensors of the block linears (e.g. `blocks.3.ffn.2.weight`)."""
    module, _, leaf = name.rpartition(".")
    return leaf == "weight" and len(shape) == 2 and is_block_linear(module)


def block_linears(model: nn.Module):
    """(name, module) of every quantisable block linear of a DiT, in module order."""
    for name, module in model.named_modules():
        if is_block_linear(name):
            yield name, module


_set_module = set_module  # the one module-swap helper (runtime.weights)


def _dense_linear(weight: torch.Tensor, bias) -> nn.Module:
    """The DiT's own dtype-following linear (`CastLinear`) holding `weight` and `bias`."""
    from wanmoe.models.layers import CastLinear

    lin = CastLinear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    lin.bias = bias
    return lin


def quantize_model(model: nn.Module, mode: str, use_scaled_mm: bool = False, skip=()) -> nn.Module:
    """Convert the block linears of a loaded DiT in place; returns the model.

    bf16: weights stored in bf16; fp8: `FP8Linear` (per-channel scales); int8: `Int8Linear`;
    keep: leave everything as loaded. Layers that are already quantised (e.g. GGUF weights kept
    by `install_quantized`) are dequantised one layer at a time and converted. Module paths in
    `skip` are left alone (layers already quantised while loading, `quant.on_load`).
    """
    if mode not in MODES:
        raise InputError(f"weights mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "keep":
        return model
    skip = set(skip)
    for name, module in list(block_linears(model)):
        if name in skip:
            continue
        workspace = getattr(module, "workspace", None)  # a converted layer keeps sharing buffers
        if isinstance(module, _QuantLinear):
            weight = module.dequantized(torch.float32)  # one layer at a time
        elif isinstance(module, nn.Linear):
            weight = module.weight.data
        else:
            raise InputError(f"{name} is a {type(module).__name__}, which --weights {mode} cannot convert")
        if mode == "bf16":
            if isinstance(module, nn.Linear):
                module.weight.data = weight.to(torch.bfloat16)
            else:
                _replace(model, name, module, _dense_linear(weight.to(torch.bfloat16), module.bias))
        elif mode == "fp8":
            _replace(model, name, module, FP8Linear(*quantize_fp8(weight), module.bias, use_scaled_mm, workspace))
        else:
            _replace(model, name, module, Int8Linear(*quantize_int8(weight), module.bias, workspace))
    return model


def set_fp8_matmul(model: nn.Module, mode: str) -> int:
    """Set the matmul of every `FP8Linear` of `model` (`--fp8-matmul dequant|scaled|auto`);
    returns how many layers were set (0 for a model with no fp8 layers)."""
    n = 0
    for module in model.modules():
        if isinstance(module, FP8Linear):
            module.matmul = mode
            n += 1
    return n


def _replace(model: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
    """Swap a converted layer in; side-branch patches (LoRA) on the old layer carry over."""
    if getattr(old, "patches", None):
        new = as_weight_linear(new)
        new.patches = list(old.patches)
    _set_module(model, name, new)


def make_installer(workspace: DequantWorkspace | None = None, device=None,
                   dequantize_to: torch.dtype | None = None):
    """An `install_quantized(module, name, value)` callback for `stream_load`.

    Default (`--weights keep`): quantised weights stay quantised (GGUFLinear / FP8Linear), all
    sharing `workspace` (None: each call dequantises into a fresh tensor).
    `dequantize_to=<compute dtype>` (`--weights bf16` etc.): each weight is dequantised at load
    into `model.storage_dtype(name, compute dtype)` and stays an nn.Linear.
    """

    def install(module: nn.Module, name: str, value) -> None:
        if dequantize_to is None:
            install_quantized(module, name, value, workspace=workspace, device=device)
            return
        rule = getattr(type(module), "storage_dtype", None)
        dtype = rule(name, dequantize_to) if rule is not None else dequantize_to
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        _install_dense(owner, name, leaf, value, device, dtype)

    return install


def install_quantized(module: nn.Module, name: str, value, workspace: DequantWorkspace | None = None,
                      device=None) -> None:
    """Install a non-torch weight (`GGUFWeight` or `FP8Weight`) under `name` of root `module`.

    `name` is the official tensor name (`blocks.0.self_attn.q.weight`). The nn.Linear that owns
    it is replaced by a `GGUFLinear` / `FP8Linear` that keeps the same `bias` parameter object,
    so a bias streamed in before or after is kept. A quantised tensor that is not a Linear
    weight (a file that quantised a norm or table) is dequantised into the existing parameter.
    """
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        raise CheckpointError(f"tensor {name!r} has no matching module in {type(module).__name__}") from None
    if leaf == "weight" and isinstance(owner, nn.Linear):
        _check_value(name, value)
        shape = value.shape if isinstance(value, GGUFWeight) else tuple(value.weight.shape)
        _check_shape(name, shape, (owner.out_features, owner.in_features))
        if device is not None:
            value = value.to(device)
        if isinstance(value, GGUFWeight):
            new = GGUFLinear(value, owner.bias, workspace)
        else:
            new = FP8Linear(value.weight, value.scale, owner.bias, workspace=workspace)
        _set_module(module, owner_name, new)
        return
    _install_dense(owner, name, leaf, value, device)


def _check_value(name: str, value) -> None:
    if not isinstance(value, (GGUFWeight, FP8Weight)):
        raise TypeError(f"install_quantized: {name!r} is a {type(value).__name__}; "
                        "it takes GGUFWeight or FP8Weight values")


def _install_dense(owner: nn.Module, name: str, leaf: str, value, device, dtype=None) -> None:
    target = getattr(owner, leaf, None)
    if not isinstance(target, torch.Tensor):
        raise CheckpointError(f"tensor {name!r} does not match a parameter of the model")
    if dtype is None:
        dtype = target.dtype if target.is_floating_point() else torch.float32
    _check_value(name, value)
    dense = value.dequantize(dtype)
    _check_shape(name, tuple(dense.shape), tuple(target.shape))
    if device is not None:
        dense = dense.to(device)
    setattr(owner, leaf, nn.Parameter(dense, requires_grad=False))


def _check_shape(name: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(got)} but the model expects {tuple(want)}")


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (quantised weights at their real size)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
