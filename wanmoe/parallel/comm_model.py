"""Communication model of the parallel schemes: bytes each rank sends per denoise step.

Derived from the shapes only (no measurement): used by `benchmarks/comm_model.py` and
docs/multi-gpu.md. Conventions: L tokens (sequence padded to a multiple of U), d model width,
`layers` DiT blocks, `forwards` DiT forwards per step per rank (2 with CFG on one rank group,
1 with CFG parallel or guidance 1), activations in bf16 (2 bytes) on the wire, the gathered
hidden state in fp32 (the residual stream is fp32, spec §2.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wanmoe.models.dit import WanBlock


@dataclass(frozen=True)
class Shapes:
    """What the byte counts depend on."""

    tokens: int  # L
    dim: int  # d
    layers: int
    latent_elems: int  # C * F * h * w of one sample
    block_params: int  # parameters of all blocks of one expert


def shapes_for(preset, width: int, height: int, frames: int) -> Shapes:
    """Shapes of a `configs.ModelPreset` at a size (tokens after the (1, 2, 2) patching)."""
    st, sh, sw = preset.vae.stride
    f, h, w = (frames - 1) // st + 1, height // sh, width // sw
    pt, ph, pw = preset.dit.patch_size
    dit = preset.dit
    with torch.device("meta"):  # the block's own parameter list, no memory
        per_block = sum(p.numel() for p in WanBlock(dit).parameters())
    return Shapes(tokens=(f // pt) * (h // ph) * (w // pw), dim=dit.dim, layers=dit.num_layers,
                  latent_elems=preset.vae.z_dim * f * h * w, block_params=dit.num_layers * per_block)


def ulysses_bytes(s: Shapes, u: int, forwards: int, act_bytes: int = 2) -> float:
    """Per rank per step: 4 all-to-alls (q, k, v out; attention back) per block, each moving
    (U-1)/U of a [L/U, d] tensor, plus the all-gather of the fp32 hidden state after the blocks."""
    if u == 1:
        return 0.0
    lp = math.ceil(s.tokens / u) * u
    a2a = 4 * s.layers * (lp // u) * s.dim * act_bytes * (u - 1) / u
    gather = (lp // u) * s.dim * 4 * (u - 1)  # this rank's shard to each of the U-1 others
    return forwards * (a2a + gather)


def cfg_bytes(s: Shapes) -> float:
    """Per rank per step: this rank's fp32 velocity to its partner (an all-gather of 2)."""
    return s.latent_elems * 4.0


def fsdp_bytes(s: Shapes, n: int, forwards: int, param_bytes: int = 2) -> float:
    """Per rank per step: every block's parameters all-gathered once per forward (received)."""
    return forwards * s.block_params * param_bytes * (n - 1) / n


def expert_bytes_per_video(s: Shapes) -> float:
    """Once per video: the latent (fp32) and the UniPC history (2 x0 predictions + last x)."""
    return 4 * s.latent_elems * 4.0
