"""Initial noise: generator on the target device, float32, seed validation (spec §4.2)."""

import sys

import pytest
import torch

from wanmoe.errors import InputError
from wanmoe.sampling.noise import initial_noise, random_seed, resolve_seed


def test_cpu_noise_is_the_seeded_cpu_generator():
    n = initial_noise((16, 2, 4, 6), seed=42, device="cpu")
    ref = torch.randn(16, 2, 4, 6, generator=torch.Generator("cpu").manual_seed(42))
    assert n.dtype == torch.float32 and n.shape == (16, 2, 4, 6)
    assert torch.equal(n, ref)
    assert not torch.equal(n, initial_noise((16, 2, 4, 6), seed=43, device="cpu"))


def test_seed_range():
    assert initial_noise((2,), seed=2**63 - 1, device="cpu").shape == (2,)
    for bad in (-1, 2**63, 1.5, True, "3"):
        with pytest.raises(InputError, match="seed"):
            initial_noise((2,), seed=bad, device="cpu")
    with pytest.raises(InputError, match="shape"):
        initial_noise((2, 0), seed=1, device="cpu")


def test_random_seed():
    seeds = {random_seed() for _ in range(5)}
    assert all(0 <= s <= sys.maxsize for s in seeds) and len(seeds) > 1
    assert 0 <= resolve_seed(-1) <= sys.maxsize
    assert resolve_seed(7) == 7
    with pytest.raises(InputError):
        resolve_seed(-2)


@pytest.mark.gpu
def test_cuda_noise_uses_cuda_generator():
    # spec §4.2 / §9 item 15: torch.Generator(device='cuda').manual_seed(seed), drawn on CUDA
    n = initial_noise((16, 21, 8, 8), seed=123, device="cuda")
    ref = torch.randn(16, 21, 8, 8, device="cuda",
                      generator=torch.Generator(device="cuda").manual_seed(123))
    assert n.device.type == "cuda" and torch.equal(n, ref)
    cpu_gen = initial_noise((16, 21, 8, 8), seed=123, device="cuda", generator_device="cpu")
    assert cpu_gen.device.type == "cuda" and not torch.equal(n, cpu_gen)
