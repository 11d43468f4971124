"""Spatial tiled decode: exact when one tile covers everything, small seams otherwise."""

import math

import pytest
import torch
from helpers_vae import one_thread, seeded_vae, tiny_cfg  # noqa: F401  (one_thread: autouse fixture)
from tolerance import assert_close_rel

from wanmoe.errors import InputError
from wanmoe.vae import TileSpec
from wanmoe.vae.tiling import ramp_weights, tile_starts

TINY = {"2.1": tiny_cfg("2.1"), "2.2": tiny_cfg("2.2")}


def psnr(a, b):
    """PSNR for [-1, 1] video (peak-to-peak 2)."""
    mse = ((a - b) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def test_tile_spec_validation():
    with pytest.raises(InputError, match="overlap"):
        TileSpec(8, 8, 4)
    with pytest.raises(InputError, match=">= 1"):
        TileSpec(0, 8, 0)


@pytest.mark.parametrize("size, tile, ov", [(12, 6, 2), (13, 5, 1), (9, 9, 2), (5, 8, 1), (20, 7, 3), (40, 16, 4)])
def test_tile_grid_covers_with_overlap_and_positive_weights(size, tile, ov):
    starts = tile_starts(size, tile, ov)
    t = min(tile, size)
    assert starts[0] == 0 and starts[-1] + t == size
    assert all(0 < b - a <= t - ov for a, b in zip(starts, starts[1:]))  # neighbours overlap >= ov
    total, depth = torch.zeros(size * 4), torch.zeros(size * 4)
    for s, w in zip(starts, ramp_weights(starts, tile, size, 4)):
        total[s * 4:(s + t) * 4] += w
        depth[s * 4:(s + t) * 4] += 1
    assert (total > 0).all()  # every pixel gets weight (normalised later)
    two = depth <= 2  # where at most two tiles meet, the linear ramps are a partition of unity
    assert_close_rel(total[two], torch.ones_like(total[two]), rtol=2.4e-7)  # 2 ulps; measured 0


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_single_tile_equals_untiled_exactly(version):
    vae = seeded_vae(TINY[version], gammas=False)
    z = torch.randn(1, vae.cfg.z_dim, 2, 3, 4)
    with torch.no_grad():
        assert torch.equal(vae.decode(z, tiling=TileSpec(3, 4, 1)), vae.decode(z))
        assert torch.equal(vae.decode(z, tiling=TileSpec(16, 16, 2)), vae.decode(z))


def test_real_tiling_is_close_and_blending_beats_hard_seams():
    vae = seeded_vae(TINY["2.1"], gammas=False)
    z = torch.randn(1, 16, 2, 12, 12)
    with torch.no_grad():
        full = vae.decode(z)
        blended = vae.decode(z, tiling=TileSpec(6, 6, 2))
        hard = vae.decode(z, tiling=TileSpec(6, 6, 0))  # non-overlapping tiles: plain seams
    err, err_hard = (blended - full).abs().max().item(), (hard - full).abs().max().item()
    p, p_hard = psnr(blended, full), psnr(hard, full)
    print(f"\ntiled vs untiled (tile 6x6, overlap 2 latent): max abs {err:.3e}, PSNR {p:.1f} dB; "
          f"no overlap: max abs {err_hard:.3e}, PSNR {p_hard:.1f} dB")
    assert 0 < err  # tiles really were decoded separately
    assert p > p_hard  # the overlap + ramp blend reduces the seam error
