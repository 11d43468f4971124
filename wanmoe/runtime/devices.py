"""Built-in table of GPUs for the planner (`wanmoe plan --gpu NAME`).

Values are the vendors' published specifications (dense, no sparsity), rounded. GeForce cards
are listed at their bf16 rate with fp32 accumulation (half their fp16-accumulate rate), which
is what PyTorch matmuls use. `pcie_gbps` is an achievable pinned host-to-device rate for the
card's link (gen3 x16 ~12, gen4 x16 ~25, gen5 x16 ~50 GB/s; x8 cards half), an assumption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wanmoe.errors import InputError

GB = 10**9
GIB = 2**30


@dataclass(frozen=True)
class Device:
    """One GPU: memory, bandwidths and dense matmul rates."""

    name: str
    vram_bytes: int
    mem_gbps: float  # device memory bandwidth, GB/s
    bf16_tflops: float  # dense bf16 tensor-core rate (fp32 accumulate)
    fp8_tflops: float  # dense fp8 rate; 0 when the card has no fp8 tensor cores
    pcie_gen: int
    pcie_gbps: float  # achievable host -> device copy rate, GB/s


def _d(name, vram_gib, mem, bf16, fp8, gen, lanes=16):
    link = {3: 12.0, 4: 25.0, 5: 50.0}[gen] * lanes / 16
    return Device(name, int(vram_gib * GIB), mem, bf16, fp8, gen, link)


DEVICES: dict[str, Device] = {d.name: d for d in (
    _d("RTX 3060 12G", 12, 360, 25.6, 0, 4),
    _d("RTX 4060 Ti 16G", 16, 288, 22.1, 44.2, 4, lanes=8),
    _d("RTX 4070 Ti Super 16G", 16, 672, 44.1, 88.2, 4),
    _d("RTX 3090 24G", 24, 936, 35.6, 0, 4),
    _d("RTX 4090 24G", 24, 1008, 82.6, 165.2, 4),
    _d("RTX 5090 32G", 32, 1792, 104.8, 209.5, 5),
    # data-centre cards: the memory CUDA reports (total_memory), a little under the label
    _d("L40S 48G", 45.0, 864, 362, 733, 4),
    _d("A100 40G", 39.4, 1555, 312, 0, 4),
    _d("A100 80G", 79.3, 2039, 312, 0, 4),
    _d("H100 80G", 79.2, 3350, 989, 1979, 5),
    _d("H200 141G", 140.4, 4800, 989, 1979, 5),
)}


def _key(text: str) -> str:
    """'NVIDIA GeForce RTX 4090 24GB' -> '409024': vendor words, units and separators dropped."""
    return re.sub(r"nvidia|geforce|rtx|gib|gb|[\s\-_]", "", text.lower()).removesuffix("g")


_ALIASES = {
    "3060": "RTX 3060 12G", "306012": "RTX 3060 12G",
    "4060ti": "RTX 4060 Ti 16G", "4060ti16": "RTX 4060 Ti 16G",
    "4070tisuper": "RTX 4070 Ti Super 16G", "4070tisuper16": "RTX 4070 Ti Super 16G",
    "3090": "RTX 3090 24G", "309024": "RTX 3090 24G", "4090": "RTX 4090 24G",
    "409024": "RTX 4090 24G", "5090": "RTX 5090 32G", "509032": "RTX 5090 32G", "l40s48": "L40S 48G",
    "l40s": "L40S 48G", "a10040": "A100 40G", "a100": "A100 80G", "a10080": "A100 80G",
    "h100": "H100 80G", "h10080": "H100 80G", "h200": "H200 141G", "h200141": "H200 141G",
}


def find_device(name: str) -> Device:
    """A device by the names people write ("RTX 4090", "4090", "h100", "A100 40GB")."""
    key = _key(name)
    if key in _ALIASES:
        return DEVICES[_ALIASES[key]]
    raise InputError(f"GPU {name!r} is not in the table; use one of {', '.join(DEVICES)} "
                     f"or give --vram (e.g. --vram 16GB)")


def parse_bytes(text: str, flag: str) -> int:
    """'16GB', '16G', '16 GiB', '24000MB', '16' (GB) -> bytes. GB/G = GiB, as cards are sold."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m|tb|t)?\s*", str(text).lower())
    if not m:
        raise InputError(f"{flag} {text!r} is not a size; use e.g. 16GB, 24G or 12000MB")
    value, unit = float(m.group(1)), (m.group(2) or "gb")
    scale = {"t": 2**40, "tb": 2**40, "g": GIB, "gb": GIB, "gib": GIB, "m": 2**20, "mb": 2**20, "mib": 2**20}
    if value <= 0:
        raise InputError(f"{flag} {text!r} must be more than zero")
    return int(value * scale[unit])
