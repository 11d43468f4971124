"""Shared pieces of the quantisation / GGUF tests: the tiny DiT, its weights, GGUF mixes, raw blocks.

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
The Q4_K_M mix rule and the fp16 field offsets are written from the spec (formats.md §4) and
ggml's `ggml-common.h`, not taken from the code under test.
"""

from __future__ import annotations

import numpy as np
import torch

from wanmoe.configs import DiTConfig

# Block linears 256 wide (Q8_0 needs multiples of 32, K-quants 256); 2 heads of 128 as detection assumes.
CFG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=4, out_dim=4,
                freq_dim=32, text_dim=32, text_len=16)

# Byte offsets of the fp16 scale fields in each block type (ggml-common.h).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def tiny_state(seed: int = 0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Official-name state dict of a `CFG` WanDiT: N(0, 0.05^2) per tensor, in state-dict order.

    `generator` (instead of `seed`) lets a test keep drawing its inputs from the same stream.
    """
    from wanmoe.models.dit import WanDiT

    with torch.device("meta"):
        m = WanDiT(CFG)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in m.state_dict().items()}


def mix_type(name: str, mix: str) -> str:
    """GGUF type of a block-linear weight in a file of `mix`: Q4_K_M gives the v projections and
    ffn.2 Q6_K and the rest Q4_K (formats.md §4); any other mix is one type for all."""
    if mix == "Q4_K_M":
        return "Q6_K" if (".v." in name or "ffn.2" in name) else "Q4_K"
    return mix


def gguf_tensors(sd: dict[str, torch.Tensor], mix: str) -> dict:
    """`sd` with every 2-D block weight quantised by our quantiser for `mix`; the rest as is."""
    from wanmoe.runtime.quant.quantize import quantize_gguf

    return {k: quantize_gguf(v, mix_type(k, mix))
            if k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2 else v
            for k, v in sd.items()}


def random_blocks(qtype: str, rows: int, row_len: int, seed: int = 0, scale: float = 0.01) -> np.ndarray:
    """Random raw blocks `[rows, row bytes]` uint8 of `qtype`, with finite fp16 scales.

    Random bytes in the fp16 scale fields could be NaN/Inf, which no real file holds, so they
    are overwritten with N(0, scale^2) values.
    """
    from wanmoe.runtime.quant.gguf_dequant import QUANT_SIZES

    block, size = QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, row_len // block, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = (rng.standard_normal((rows, row_len // block)) * scale).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, row_len // block, 2)
    return raw.reshape(rows, -1)
