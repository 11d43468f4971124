"""One LoRA file's change to one module, and the two ways to apply it: merge or side branch.

Scale, exactly as the Wan2.2-Lightning reference (`wan/utils/utils.py`,
`load_and_merge_lora_weight`) and ComfyUI (`comfy/weight_adapter/lora.py`) apply it:

    ΔW = (strength · (alpha / rank)) · (up @ down)     alpha = rank when the file has none
    ΔW += strength · diff                                a full-weight delta (`.diff`, `.diff_m`)
    Δb  = strength · diff_b                              a bias delta (`.diff_b`, PEFT `lora_B.bias`)

Every delta is computed in float32 from the file's tensors (any float dtype), added to a float32
copy of the weight one patch after another, and rounded once into the stored dtype. Strength 0
is "no LoRA" bit-exactly: such patches are skipped, never added as zeros (-0.0 + 0.0 = +0.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wanmoe.errors import CheckpointError, InputError


@dataclass(frozen=True, eq=False)
class LoRAPatch:
    """Delta of one parameter (and its module's bias) from one LoRA file, at one strength."""

    module: str                          # official module path, e.g. "blocks.3.self_attn.q"
    param: str = "weight"                # the parameter ΔW applies to ("modulation" for diff_m)
    up: torch.Tensor | None = None       # [out, r] (conv: [out, r, 1, 1, 1]), file dtype
    down: torch.Tensor | None = None     # [r, in] (conv: [r, in, kt, kh, kw]), file dtype
    alpha: float | None = None           # None: alpha = rank (scale 1)
    diff: torch.Tensor | None = None     # full delta, shape of the parameter
    diff_b: torch.Tensor | None = None   # bias delta [out]
    strength: float = 1.0
    source: str = ""                     # the LoRA file, for messages

    def __repr__(self) -> str:
        parts = [f"{self.target!r}", f"strength={self.strength}"]
        if self.up is not None:
            parts.append(f"rank={self.rank}, alpha={self.alpha}")
        if self.diff is not None:
            parts.append(f"diff={list(self.diff.shape)}")
        if self.diff_b is not None:
            parts.append(f"diff_b={list(self.diff_b.shape)}")
        return f"LoRAPatch({', '.join(parts)})"

    # ---- shape and scale ----------------------------------------------------------------------
    @property
    def target(self) -> str:
        """Official parameter name ΔW applies to."""
        return f"{self.module}.{self.param}"

    @property
    def is_low_rank(self) -> bool:
        return self.up is not None

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """strength · alpha / rank, in the reference's order (alpha / rank first)."""
        if self.down is None:
            return self.strength
        ratio = 1.0 if self.alpha is None else self.alpha / self.rank
        return self.strength * ratio

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        """Shape of ΔW as the file implies it (conv factors give the conv kernel shape)."""
        if self.diff is not None:
            return tuple(self.diff.shape)
        if self.up is not None:
            return (int(self.up.shape[0]),) + tuple(self.down.shape[1:])
        return None

    def with_strength(self, strength: float) -> "LoRAPatch":
        """The same patch at `strength` times its current strength."""
        return replace(self, strength=self.strength * float(strength))

    def to(self, device=None, dtype=None) -> "LoRAPatch":
        """Tensors moved (and optionally cast) once, e.g. to the GPU before a run."""
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return replace(self, up=mv(self.up), down=mv(self.down), diff=mv(self.diff),
                       diff_b=mv(self.diff_b))

    # ---- full deltas --------------------------------------------------------------------------
    def _low_rank_delta(self, dtype, shape, device=None) -> torch.Tensor:
        # the factors move to the weight's device first: the product is [out, in], they are small
        up = self.up.flatten(1).to(device=device, dtype=torch.float32)      # [out, r]
        down = self.down.flatten(1).to(device=device, dtype=torch.float32)  # [r, in*k]
        d = self.scale * torch.mm(up, down)  # fp32, as the references
        return d.reshape(shape or self.weight_shape).to(dtype)

    def delta(self, dtype: torch.dtype = torch.float32, shape=None) -> torch.Tensor:
        """The full-weight delta ΔW (strength included), computed in fp32, returned in `dtype`."""
        parts = []
        if self.up is not None:
            parts.append(self._low_rank_delta(torch.float32, shape))
        if self.diff is not None:
            parts.append(self.strength * self.diff.to(torch.float32))
        if not parts:
            raise InputError(f"LoRA patch for {self.target!r} from {self.source} has no weight delta")
        d = parts[0] if len(parts) == 1 else parts[0] + parts[1].reshape(parts[0].shape)
        return d.to(dtype)

    def bias_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Δb = strength · diff_b in `dtype`, or None when the file has no bias delta."""
        if self.diff_b is None:
            return None
        return (self.strength * self.diff_b.to(torch.float32)).to(dtype)

    def add_to_(self, w32: torch.Tensor) -> None:
        """w32 += ΔW in place (float32), low-rank part then full part, as ComfyUI adds them."""
        if self.strength == 0:
            return
        if self.up is not None:
            w32 += self._low_rank_delta(torch.float32, w32.shape, w32.device)
        if self.diff is not None:
            w32 += self.strength * self.diff.to(device=w32.device, dtype=torch.float32).reshape(w32.shape)

    def add_bias_to_(self, b32: torch.Tensor) -> None:
        if self.strength == 0 or self.diff_b is None:
            return
        b32 += self.strength * self.diff_b.to(device=b32.device, dtype=torch.float32).reshape(b32.shape)

    def merge_into(self, weight: torch.Tensor) -> torch.Tensor:
        """W + ΔW computed in fp32 and rounded once to W's dtype (a new tensor; W is untouched)."""
        _check_float(weight, self.target)
        if self.strength == 0:
            return weight.clone()
        w32 = weight.to(torch.float32, copy=True)
        self.add_to_(w32)
        return w32.to(weight.dtype)

    # ---- side branch --------------------------------------------------------------------------
    def side(self, x: torch.Tensor) -> torch.Tensor:
        """What this patch adds to a linear's output: scale·(x @ down.T) @ up.T (+ full/bias deltas).

        Computed in x's dtype, for bases whose weight is never materialised in float (fp8, GGUF):
        linear(x, W + ΔW, b + Δb) == linear(x, W, b) + side(x) up to rounding.
        """
        if self.up is not None and self.down.dim() != 2:
            raise InputError(f"LoRA patch for {self.target!r} is a conv LoRA; it can only be merged")
        y = None
        if self.up is not None:
            h = F.linear(x, self.down.to(device=x.device, dtype=x.dtype))  # [..., r]
            y = self.scale * F.linear(h, self.up.to(device=x.device, dtype=x.dtype))
        if self.diff is not None:
            full = self.strength * F.linear(x, self.diff.to(device=x.device, dtype=x.dtype))
            y = full if y is None else y + full
        if self.diff_b is not None:
            b = self.bias_delta(x.dtype).to(x.device)
            y = b.expand(*x.shape[:-1], b.shape[0]) if y is None else y + b
        if y is None:
            raise InputError(f"LoRA patch for {self.target!r} from {self.source} is empty")
        return y


def merge_patches(weight: torch.Tensor, patches: Sequence[LoRAPatch]) -> torch.Tensor:
    """W + Σ ΔW: one float32 copy, every weight delta added in order, one rounding to W's dtype.

    What the weight path does per linear after fetch -> dequantise -> cast (W is not modified).
    """
    live = [p for p in patches if p.strength != 0 and (p.is_low_rank or p.diff is not None)]
    if not live:
        return weight
    _check_float(weight, live[0].target)
    acc = weight.to(torch.float32, copy=True)
    for p in live:
        p.add_to_(acc)
    return acc.to(weight.dtype)


def merge_bias(bias: torch.Tensor | None, patches: Sequence[LoRAPatch]) -> torch.Tensor | None:
    """b + Σ Δb the same way (None stays None: a bias delta needs a bias to land in)."""
    live = [p for p in patches if p.strength != 0 and p.diff_b is not None]
    if bias is None or not live:
        if live:
            raise InputError(f"LoRA {live[0].source} has a bias delta for {live[0].module!r}, "
                             f"which has no bias")
        return bias
    acc = bias.to(torch.float32, copy=True)
    for p in live:
        p.add_bias_to_(acc)
    return acc.to(bias.dtype)


def linear_with_patches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        patches: Sequence[LoRAPatch]) -> torch.Tensor:
    """Reference side-branch linear: F.linear(x, W, b) + Σ side(x), all in x's dtype."""
    b = None if bias is None else bias.to(x.dtype)
    y = F.linear(x, weight.to(x.dtype), b)
    for p in patches:
        if p.strength != 0:
            y = y + p.side(x)
    return y


# ---- applying LoRA sets to a model -----------------------------------------------------------

def scaled_patches(loras: Iterable) -> list[LoRAPatch]:
    """[(LoRASet, strength), ...] -> patches at their strength, zero-strength ones dropped."""
    out = []
    for item in loras:
        try:
            lora_set, strength = item
        except (TypeError, ValueError):
            raise InputError(f"LoRA list entry {item!r} must be a (LoRASet, strength) pair") from None
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise InputError(f"LoRA strength {strength!r} for {lora_set.source} must be a finite number")
        if strength == 0:
            continue
        out.extend(p.with_strength(strength) for p in lora_set.patches.values())
    return out


def runtime_patches(model: nn.Module, loras: Iterable,
                    linear_only: bool = True) -> dict[str, list[LoRAPatch]]:
    """Patches per module path, strength applied, in list order, checked against `model`'s shapes.

    With `linear_only`, only patches on the weight of an `nn.Linear` are returned: those are the
    ones a side branch (or a per-forward merge on the weight path) can serve. The rest (norm and
    modulation deltas, conv LoRAs: all small fp32 parameters) must be merged at load:
    `merge_loras(model, loras, exclude=runtime_patches(model, loras).keys())`.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    out: dict[str, list[LoRAPatch]] = {}
    for p in scaled_patches(loras):
        _check_target(p, params)
        if linear_only and not (p.param == "weight" and isinstance(modules.get(p.module), nn.Linear)):
            continue
        out.setdefault(p.module, []).append(p)
    return out


def merge_loras(model: nn.Module, loras: Iterable, exclude: Iterable[str] = ()) -> int:
    """Merge [(LoRASet, strength), ...] into `model`'s float parameters in place.

    Per parameter: one float32 copy, every patch added in list order, one rounding into the
    stored dtype. Modules in `exclude` (served by runtime patches) are left alone. Returns the
    number of parameters changed.
    """
    skip = set(exclude)
    params = dict(model.named_parameters())
    groups: dict[str, list] = {}  # parameter name -> [bound add_to_ / add_bias_to_]
    for p in scaled_patches(loras):
        if p.module in skip:
            continue
        _check_target(p, params)
        if p.is_low_rank or p.diff is not None:
            groups.setdefault(p.target, []).append(p.add_to_)
        if p.diff_b is not None:
            groups.setdefault(f"{p.module}.bias", []).append(p.add_bias_to_)
    with torch.no_grad():
        for name, adds in groups.items():
            param = params[name]
            _check_float(param, name)
            acc = param.detach().to(torch.float32, copy=True)
            for add in adds:
                add(acc)
            param.copy_(acc.to(param.dtype))
    return len(groups)


def _check_target(p: LoRAPatch, params: dict) -> None:
    w = params.get(p.target)
    if w is None:
        raise CheckpointError(f"LoRA {p.source}: target {p.target!r} is not a parameter of this model; "
                              f"was the LoRA loaded for a different model?")
    shape = p.weight_shape
    # a conv LoRA may store its down factor flattened to [r, in*k]: same rows, same element count
    if shape is not None and tuple(w.shape) != shape and not (
            p.diff is None and shape[0] == w.shape[0] and math.prod(shape) == w.numel()):
        raise CheckpointError(f"LoRA {p.source}: delta for {p.target!r} has shape {list(shape)}, "
                              f"the model's parameter {list(w.shape)}; the LoRA is for another model size")
    if p.diff_b is not None:
        b = params.get(f"{p.module}.bias")
        if b is None or b.numel() != p.diff_b.numel():
            got = None if b is None else list(b.shape)
            raise CheckpointError(f"LoRA {p.source}: bias delta for {p.module!r} has shape "
                                  f"{list(p.diff_b.shape)}, the model's bias {got}")


def _check_float(t: torch.Tensor, name: str) -> None:
    if not t.is_floating_point() or t.element_size() < 2 or t.device.type == "meta":
        raise InputError(f"cannot merge a LoRA into {name!r} stored as {t.dtype} on {t.device}; "
                         f"merging needs materialised fp32/bf16/fp16 weights (use runtime_patches "
                         f"for quantised bases)")
