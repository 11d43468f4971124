"""fp8 / int8 DiT block linears quantised tensor by tensor while an expert loads.

`--weights fp8|int8` used to load the whole expert in its float storage dtype and then convert
it (`apply.quantize_model`): the host (or device) peak was a whole float expert. Here each
quantisable weight (`WanDiT.meta.quantisable`) is read in the dtype the float load would have
given it (`WanDiT.storage_dtype`), moved to the load device, merged with its LoRA deltas when
LoRAs are merged, quantised by the same quantisers and installed as `FP8Linear` / `Int8Linear`
before the next tensor is read. The result is bit-identical to load-then-quantise: the same
float values reach the same quantiser on the same device, and merged LoRAs go into the float
weight first (one float32 sum, one rounding into the stored dtype, as `lora.patch.merge_loras`).

The loader side is `loading.on_read.ConvertOnRead` (it calls `plan` and `convert`);
`install` goes to `stream_load`'s `install_quantized`; `finish` runs after the load: it merges
the LoRA deltas of every other parameter (and the biases of the quantised linears) and converts
whatever block linear was stored quantised in the file (GGUF), exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wanmoe.errors import InputError
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.quant.apply import is_block_weight, quantize_model
from wanmoe.runtime.quant.linear import FP8Linear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_int8
from wanmoe.runtime.weights import set_module

ON_LOAD_MODES = ("fp8", "int8")
_TRIM = []  # [malloc_trim or None], looked up once


def release_freed_memory() -> None:
    """Hand memory freed by the C heap back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Each float weight read for quantisation is freed right after it, but glibc keeps freed
    blocks that sit between the kept fp8 / int8 weights: measured on a 1 GB bf16 model, the peak
    RSS varied between 0.6 and 1.7 GB over the quantised expert from run to run without this
    call, and stayed at +0.06 GB with it (docs/memory.md, benchmarks/quant_load_rss.py).
    """
    if not _TRIM:
        fn = None
        try:
            import ctypes

            fn = ctypes.CDLL("libc.so.6").malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _TRIM.append(fn)
    if _TRIM[0] is not None:
        _TRIM[0](0)


@dataclass
class ChannelQuantised:
    """One weight quantised on read: `weight` (float8_e4m3fn or int8) * `scale` [out, 1]."""

    mode: str
    weight: torch.Tensor
    scale: torch.Tensor


class OnLoadQuantiser:
    """Quantise a DiT's block linears as they are read; merged LoRAs go in first.

    mode: "fp8" | "int8"; compute_dtype: the load's compute dtype (each weight is read in
    `WanDiT.storage_dtype(name, compute_dtype)`, as the float load stores it); device: where the
    expert is loaded (weights are quantised there, as `quantize_model` did after the load);
    loras: [(LoRASet, strength), ...] to merge (`LoRAMode.MERGE`), () for none; fallback: the
    install callback for tensors stored quantised in the file (GGUF: `apply.make_installer`).
    """

    def __init__(self, mode: str, cfg, compute_dtype: torch.dtype, device=None, loras=(),
                 fallback=None) -> None:
        if mode not in ON_LOAD_MODES:
            raise InputError(f"weights mode {mode!r} cannot be quantised while loading; one of "
                             f"{', '.join(ON_LOAD_MODES)}")
        self.mode, self.cfg, self.compute_dtype = mode, cfg, compute_dtype
        self.device = None if device is None else torch.device(device)
        self.loras = list(loras)
        self.fallback = fallback
        self.patches: dict[str, list] = {}
        if self.loras:  # checked against the model's names and shapes before any weight is read
            from wanmoe.lora.apply import _meta_twin
            from wanmoe.lora.patch import runtime_patches

            self.patches = runtime_patches(_meta_twin(cfg), self.loras)
        self.done: set[str] = set()  # module paths quantised on read
        self._work: torch.Tensor | None = None  # float32 scratch of the largest picked weight
        self._largest = 0  # elements of the largest weight `plan` picked

    def _scratch(self, weight: torch.Tensor) -> torch.Tensor:
        """One float32 buffer reused by every quantisation (no weight-sized allocation per
        tensor: freed temporaries interleaved with the kept fp8 / int8 weights fragment the heap)."""
        if self._work is None or self._work.numel() < weight.numel() or self._work.device != weight.device:
            self._work = None
            self._work = torch.empty(max(weight.numel(), self._largest), dtype=torch.float32, device=weight.device)
        return self._work

    # ---- called by loading.on_read.ConvertOnRead ------------------------------------------------
    def plan(self, name: str, shape: tuple) -> torch.dtype | None:
        """The dtype to read `name` in when it is quantised on read, else None."""
        if not is_block_weight(name, shape):
            return None
        self._largest = max(self._largest, math.prod(shape))
        return WanDiT.storage_dtype(name, self.compute_dtype)

    def convert(self, name: str, weight: torch.Tensor) -> ChannelQuantised:
        """Float weight (as read) -> placed, LoRA-merged, quantised."""
        from wanmoe.lora.patch import merge_patches

        if self.device is not None:
            weight = weight.to(self.device)
        patches = self.patches.get(name.rpartition(".")[0])
        if patches:
            weight = merge_patches(weight, patches)  # float32 sum, one rounding into the stored dtype
        q, scale = (quantize_fp8 if self.mode == "fp8" else quantize_int8)(weight, self._scratch(weight))
        return ChannelQuantised(self.mode, q, scale)

    # ---- called by stream_load -----------------------------------------------------------------
    def install(self, model: nn.Module, name: str, value) -> None:
        if not isinstance(value, ChannelQuantised):
            if self.fallback is None:
                from wanmoe.errors import CheckpointError

                raise CheckpointError(f"tensor {name!r} is stored quantised ({type(value).__name__}) "
                                      "and no installer was given for it")
            self.fallback(model, name, value)
            return
        path = name.rpartition(".")[0]
        owner = model.get_submodule(path)
        if value.mode == "fp8":  # as quantize_model makes them: no workspace, no scaled mm
            new = FP8Linear(value.weight, value.scale, owner.bias, False, None)
        else:
            new = Int8Linear(value.weight, value.scale, owner.bias, None)
        set_module(model, path, new)
        self.done.add(path)
        release_freed_memory()  # the float weight just quantised (read on the host) is gone

    # ---- after the load ------------------------------------------------------------------------
    def finish(self, model: nn.Module) -> nn.Module:
        """Merge the remaining LoRA deltas and convert block linears stored quantised in the file."""
        self._work = None
        if self.loras:
            self._merge_rest(model)
        return quantize_model(model, self.mode, skip=self.done)

    def _merge_rest(self, model: nn.Module) -> None:
        """What `lora.apply.apply_loras(..., MERGE)` did to the float model, less the weights
        merged on read: every other parameter merged, linears stored quantised get side branches,
        the bias deltas of the quantised-on-read linears merged into their (float) biases."""
        from wanmoe.lora.apply import _stored_quantised
        from wanmoe.lora.patch import merge_loras
        from wanmoe.runtime.weights import attach_patches

        side = {p: pl for p, pl in self.patches.items()
                if p not in self.done and _stored_quantised(model, p)}
        merge_loras(model, self.loras, exclude=set(side) | self.done)
        attach_patches(model, side)
        with torch.no_grad():
            for path in sorted(self.done):
                live = [p for p in self.patches.get(path, ()) if p.diff_b is not None]
                if not live:
                    continue
                bias = model.get_submodule(path).bias
                if bias is None:
                    raise InputError(f"LoRA {live[0].source} has a bias delta for {path!r}, which has no bias")
                acc = bias.detach().to(torch.float32, copy=True)
                for p in live:
                    p.add_bias_to_(acc)
                bias.copy_(acc.to(bias.dtype))
