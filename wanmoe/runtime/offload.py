"""Where expert weights live: all resident, or only the active expert on the device.

A placement policy is an object with `activate(expert)` (called before the first step of each
expert's stage) and `release()` (after the loop). The pipeline calls them and knows nothing
else about memory; block streaming (runtime/streaming.py) is one more policy of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from wanmoe.configs import ModelPreset
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.config import OffloadMode, WeightMode

OFFLOAD_FRACTION = 0.5  # AUTO offloads when all experts' weights exceed this share of GPU memory


class Resident:
    """Every expert stays where it was loaded (the device)."""

    offloads = False

    def activate(self, expert: str) -> None:
        return None

    def release(self) -> None:
        return None


class ExpertOffload:
    """Only the active expert on the device, the others on the CPU (the official single-GPU
    behaviour, spec §3); after the loop every expert goes back to the CPU."""

    offloads = True

    def __init__(self, experts: dict[str, nn.Module], device: torch.device) -> None:
        self.experts, self.device = experts, device

    def activate(self, expert: str) -> None:
        for name, model in self.experts.items():
            model.to(self.device if name == expert else "cpu")

    def release(self) -> None:
        self.activate("")


def dit_bytes(preset: ModelPreset, dtype: torch.dtype, weights: WeightMode = WeightMode.DEFAULT) -> int:
    """Weight bytes of all experts at their storage dtypes, counted on a meta-built model."""
    with torch.device("meta"):
        model = WanDiT(preset.dit)
    per = 0
    for name, p in model.named_parameters():
        quantised = (WeightMode(weights).quantises and name.endswith(".weight")
                     and model.meta.is_quantisable(name[:-7]))
        per += p.numel() * (1 if quantised else WanDiT.storage_dtype(name, dtype).itemsize)
    return per * len(preset.experts)


def choose_offload(mode: OffloadMode, preset: ModelPreset, device: torch.device,
                   dtype: torch.dtype, weights: WeightMode = WeightMode.DEFAULT) -> bool:
    """The documented rule: an explicit mode wins (a CPU never offloads); AUTO offloads on CUDA
    when the experts' weights take more than OFFLOAD_FRACTION of the GPU's memory."""
    mode = OffloadMode(mode)
    if mode is OffloadMode.BLOCKS:  # explicit streaming runs on a CPU too (the testable path)
        return True
    if device.type != "cuda":
        return False
    if mode is not OffloadMode.AUTO:
        return mode is OffloadMode.EXPERT
    total = torch.cuda.get_device_properties(device).total_memory
    return dit_bytes(preset, dtype, weights) > OFFLOAD_FRACTION * total


def placement_for(offload: bool, experts: dict[str, nn.Module], device: torch.device,
                  blocks: int | None = None):
    """The placement policy object for a loaded pipeline; `blocks`: stream blocks with that
    many resident on the device (runtime.streaming) instead of swapping whole experts."""
    if offload and blocks is not None:
        from wanmoe.runtime.streaming import BlockStreaming

        return BlockStreaming(experts, device, blocks)
    return ExpertOffload(experts, device) if offload else Resident()


def resolve_offload(rt, preset: ModelPreset, expert_files=()) -> tuple[bool, int | None]:
    """(experts live on the host, resident block count when streaming) for a RuntimeConfig.

    `auto` on CUDA asks the memory model (runtime.memory.auto_offload): the first of none,
    expert, blocks:2 that fits the GPU at the preset's default size; an explicit mode and a
    CPU follow `choose_offload`."""
    if rt.offload is OffloadMode.AUTO and rt.device.type == "cuda":
        from wanmoe.runtime.memory import auto_offload, weight_format

        total = torch.cuda.get_device_properties(rt.device).total_memory
        on_device = rt.text_device is None or rt.text_device.type != "cpu"
        mode, n = auto_offload(preset, total, rt.dtype, weight_format(rt, expert_files),
                               rt.resident_blocks, on_device)
        return mode != "none", (n if mode == "blocks" else None)
    return choose_offload(rt.offload, preset, rt.device, rt.dtype, rt.weights), streamed_blocks(rt)


def streamed_blocks(rt) -> int | None:
    """Resident block count when `rt` (a RuntimeConfig) streams blocks, else None."""
    return rt.resident_blocks if rt.offload is OffloadMode.BLOCKS else None


def decode_tiling_for(preset: ModelPreset, latent_shape, available: int):
    """`vae.tiling.TileSpec` for decoding latents [C, F, h, w] in `available` device bytes, or
    None when the untiled decode fits (runtime.memory.auto_vae_tile)."""
    from wanmoe.runtime.memory import auto_vae_tile
    from wanmoe.vae.tiling import TileSpec

    st, sh, sw = preset.vae.stride
    _, f, h, w = latent_shape
    tile = auto_vae_tile(preset, w * sw, h * sh, (f - 1) * st + 1, available)
    return None if tile is None else TileSpec(*tile)


def auto_decode_tiling(preset: ModelPreset, latent_shape, device: torch.device):
    """`decode_tiling_for` the device's free memory now: what the driver has free plus what the
    caching allocator holds unused (a CUDA device)."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return decode_tiling_for(preset, latent_shape, free + cached)
