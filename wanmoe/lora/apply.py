"""LoRAs onto loaded experts: parse against the model's names, then merge or side-branch.

Merge mode adds every delta into the float weights at load (one fp32 sum, one rounding into
the stored dtype); layers whose weights are stored quantised (GGUF, fp8 kept as stored) are
never dequantised and requantised: they get a side branch on the weight path instead
(`runtime.weights.WeightLinear.patches`). Runtime mode puts every linear delta on a side branch
and leaves the base weights untouched, so LoRAs can be swapped between generations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wanmoe.configs import DiTConfig
from wanmoe.lora.formats import LoRASet, load_lora
from wanmoe.lora.patch import merge_loras, runtime_patches
from wanmoe.runtime.config import LoRAMode
from wanmoe.runtime.weights import DenseLinear, WeightLinear, attach_patches

LoRASpec = tuple[str, float]  # (file, strength)


def _meta_twin(cfg: DiTConfig) -> nn.Module:
    from wanmoe.models.dit import WanDiT

    with torch.device("meta"):
        return WanDiT(cfg)


def parse_loras(cfg: DiTConfig, specs: Sequence[LoRASpec]) -> list[tuple[LoRASet, float]]:
    """Read each LoRA file against the DiT's official names and shapes (no model weights needed)."""
    keys = {n: tuple(p.shape) for n, p in _meta_twin(cfg).named_parameters()}
    return [(load_lora(path, keys, source=str(path)), float(s)) for path, s in specs]


def apply_loras(model: nn.Module, loras: Sequence[tuple[LoRASet, float]], mode: LoRAMode) -> dict:
    """Merge or attach `loras` to a loaded DiT; returns counts {"merged": N, "side": M}."""
    side = runtime_patches(_meta_twin(model.cfg), loras)  # linear weight patches per module
    if LoRAMode(mode) is not LoRAMode.RUNTIME:
        side = {path: plist for path, plist in side.items() if _stored_quantised(model, path)}
    merged = merge_loras(model, loras, exclude=side.keys())
    attach_patches(model, side)
    return {"merged": merged, "side": len(side)}


def _stored_quantised(model: nn.Module, path: str) -> bool:
    layer = model.get_submodule(path)
    return isinstance(layer, WeightLinear) and not isinstance(layer, DenseLinear)
