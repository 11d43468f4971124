"""Quantised checkpoint layouts of a float DiT state: ComfyUI fp8_scaled / comfy_quant, GGUF Q8_0.

Which tensors are quantised is written out here (`LINEAR`: the q/k/v/o and FFN weights of every
block, formats.md §4) rather than taken from `wanmoe.runtime.quant`, so tests of that rule have
an independent reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

LINEAR = re.compile(r"^blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.weight$|^blocks\.\d+\.ffn\.[02]\.weight$")
E4M3_MAX = 448.0


def fp8_scaled_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI legacy fp8_scaled layout of an official DiT state: fp8 linears + scale_weight + marker."""
    out = {}
    for n, t in sd.items():
        if LINEAR.match(n):
            scale = t.abs().max() / E4M3_MAX
            out[n] = (t / scale).to(torch.float8_e4m3fn)
            out[n.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[n] = t
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def comfy_quant_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI comfy_quant layout: fp8 linears + weight_scale + per-layer `comfy_quant` JSON bytes."""
    out = {}
    for n, t in sd.items():
        if LINEAR.match(n):
            base = n.removesuffix(".weight")
            scale = t.abs().max() / E4M3_MAX
            out[n] = (t / scale).to(torch.float8_e4m3fn)
            out[base + ".weight_scale"] = scale.reshape(())
            out[base + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                      dtype=torch.uint8)
        else:
            out[n] = t
    return out


def write_gguf_dit(path, sd: Mapping[str, torch.Tensor]) -> Path:
    """GGUF file of a DiT state with Q8_0 block linears and float tensors elsewhere."""
    from wanmoe.loading.gguf import write_gguf
    from wanmoe.runtime.quant.quantize import quantize_q8_0

    write_gguf(path, {n: quantize_q8_0(t) if LINEAR.match(n) else t for n, t in sd.items()})
    return Path(path)
