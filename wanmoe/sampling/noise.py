"""Initial latent noise and seeds (spec §4.2, §1.4, §9 item 15).

The official code draws the noise with a `torch.Generator` on the CUDA device. CUDA and CPU
generators give different numbers for the same seed, so the generator device is part of the
result: by default it is the target device (the official rule on a GPU; the CPU generator on a
CPU run). `generator_device="cpu"` on a GPU run gives noise that a CPU run can reproduce, at the
price of not matching the official GPU noise.
"""

from __future__ import annotations

import random
import sys

import torch

from wanmoe.errors import InputError

MAX_SEED = sys.maxsize  # 2**63 - 1 on 64-bit builds; the official CLI draws in [0, sys.maxsize]


def check_seed(seed) -> int:
    """Return seed as an int if it is a valid torch seed in [0, 2**63 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**63 - 1:
        raise InputError(f"seed {seed!r} must be an integer in [0, {2**63 - 1}] "
                         f"(or -1 for a random seed)")
    return seed


def random_seed() -> int:
    """A random seed in [0, sys.maxsize], as the official CLI picks for seed -1."""
    return random.randint(0, MAX_SEED)


def resolve_seed(seed: int) -> int:
    """-1 -> a random seed; any other value is validated and returned."""
    if isinstance(seed, int) and not isinstance(seed, bool) and seed == -1:
        return random_seed()
    return check_seed(seed)


def initial_noise(shape, seed: int, device, generator_device=None) -> torch.Tensor:
    """float32 standard normal noise of `shape` (e.g. [z, F_lat, H_lat, W_lat]) on `device`.

    Drawn with torch.Generator(generator_device or device).manual_seed(seed), then moved to
    `device` if the two differ.
    """
    check_seed(seed)
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise InputError(f"noise shape {shape} must be a non-empty tuple of positive integers")
    device = torch.device(device)
    gen_device = torch.device(generator_device) if generator_device is not None else device
    generator = torch.Generator(device=gen_device)
    generator.manual_seed(seed)
    noise = torch.randn(shape, dtype=torch.float32, device=gen_device, generator=generator)
    return noise.to(device)
