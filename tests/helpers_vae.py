"""Shared pieces of the VAE tests: the one-thread fixture, tiny configs, seeded tiny VAEs
(the error metric is `tolerance.rel_err`).

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path. Importing
`one_thread` into a test module turns it on there (it is autouse).
"""

from __future__ import annotations

import pytest
import torch

from wanmoe.configs import WAN21_VAE_MEAN, WAN21_VAE_STD, WAN22_VAE_MEAN, WAN22_VAE_STD, VAEConfig
from wanmoe.vae import build_vae

# the published latent statistics, so normalisation is exercised with real values
_LATENT = {"2.1": (16, WAN21_VAE_MEAN, WAN21_VAE_STD), "2.2": (48, WAN22_VAE_MEAN, WAN22_VAE_STD)}


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny convs: two OpenMP threads on the shared 2-core box oversubscribe (10x+ slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(version: str, dim: int = 4, dec_dim: int | None = None) -> VAEConfig:
    """A narrow VAE of `version` with the real z_dim, mean and std (decoder width default `dim`)."""
    z_dim, mean, std = _LATENT[version]
    return VAEConfig(version=version, dim=dim, dec_dim=dim if dec_dim is None else dec_dim, z_dim=z_dim,
                     mean=mean, std=std)


def seeded_vae(cfg: VAEConfig, gammas: bool = True):
    """`build_vae(cfg).eval()` after `torch.manual_seed(0)`; `gammas`: RMS-norm scales made non-trivial."""
    torch.manual_seed(0)
    vae = build_vae(cfg).eval()
    if gammas:
        with torch.no_grad():
            for name, p in vae.named_parameters():
                if name.endswith("gamma"):
                    p.add_(0.2 * torch.randn_like(p))
    return vae
