"""Wan2.1 / Wan2.2 VAE vs diffusers `AutoencoderKLWan` with the same (tiny, random) weights, fp32.

Weights go through our official->diffusers key map. diffusers' encode returns the unnormalised
posterior, so its mean is normalised here with the official formula (spec §6.4); its decode takes
unnormalised latents, so it gets `vae.denormalize(z)`. Both sides clamp the decoded video.
Tolerance 1e-4 relative (max|a-b| / max|b|): fp32 round-off only. With
`use_reference_kernels` both sides call the same PyTorch ops in the same order (bit-identical on
this machine); the default CPU fast kernels (oneDNN conv, sum-of-squares norm) differ by round-off.
"""

import pytest
import torch
from helpers_vae import one_thread, seeded_vae, tiny_cfg  # noqa: F401  (one_thread: autouse fixture)
from tolerance import rel_err

from wanmoe.loading.keymaps.vae import official_to_diffusers
from wanmoe.vae.blocks import use_reference_kernels

diffusers = pytest.importorskip("diffusers", reason="parity reference needs diffusers")

TOL = 1e-4


def _pair(version: str):
    """Our tiny VAE and a diffusers AutoencoderKLWan in the matching configuration, same weights."""
    if version == "2.1":
        cfg = tiny_cfg("2.1", dim=8)
        ref = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, latents_mean=list(cfg.mean),
                                         latents_std=list(cfg.std))
    else:  # constructor args of the Wan2.2 VAE as in diffusers' TI2V-5B config
        cfg = tiny_cfg("2.2", dim=8, dec_dim=12)
        ref = diffusers.AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True,
                                         in_channels=12, out_channels=12, patch_size=2,
                                         scale_factor_spatial=16, latents_mean=list(cfg.mean),
                                         latents_std=list(cfg.std))
    ours = seeded_vae(cfg)  # RMS-norm scales made non-trivial
    ref.load_state_dict({official_to_diffusers(k, version): v for k, v in ours.state_dict().items()},
                        strict=True)
    return ours, ref.eval()


@pytest.mark.parametrize("version, size", [("2.1", 32), ("2.2", 64)])
@pytest.mark.parametrize("frames", [17, 33])
def test_encode_decode_match_diffusers(version, size, frames):
    ours, ref = _pair(version)
    gen = torch.Generator().manual_seed(frames)
    x = torch.rand(1, 3, frames, size, size, generator=gen) * 2 - 1
    with torch.no_grad():
        mu_ref = ours.normalize(ref.encode(x).latent_dist.mean)
        z = ours.encode(x)
        z_rand = torch.randn(z.shape, generator=gen)
        y_ref = ref.decode(ours.denormalize(z_rand)).sample
        y = ours.decode(z_rand)
        assert y_ref.abs().lt(1).float().mean() > 0.9  # the clamp does not hide the comparison
        use_reference_kernels(ours)
        z_exact, y_exact = ours.encode(x), ours.decode(z_rand)
    diffs = {"encode": rel_err(z, mu_ref), "decode": rel_err(y, y_ref),
             "encode ref-kernels": rel_err(z_exact, mu_ref), "decode ref-kernels": rel_err(y_exact, y_ref)}
    print(f"\nWan{version} {frames}x{size}x{size}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert z.shape == (1, ours.cfg.z_dim, 1 + (frames - 1) // 4, size // ours.cfg.stride[1], size // ours.cfg.stride[1])
    assert y.shape == x.shape
    assert all(v < TOL for v in diffs.values()), diffs
