"""Encode/decode driver of both tiny VAEs: shapes, input errors, chunked == full sequence, causality,
normalisation (spec §6.4-6.6) and differentiability."""

import pytest
import torch
from helpers_vae import one_thread, seeded_vae, tiny_cfg  # noqa: F401  (one_thread: autouse fixture)
from tolerance import rel_err

from wanmoe.configs import WAN21_VAE_MEAN, WAN21_VAE_STD
from wanmoe.errors import InputError
from wanmoe.vae.blocks import use_reference_kernels

TINY = {"2.1": tiny_cfg("2.1"), "2.2": tiny_cfg("2.2", dec_dim=6)}


def tiny(version):
    return seeded_vae(TINY[version])


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_round_trip_shapes(version):
    vae = tiny(version)
    s = vae.cfg.stride[1]
    for t in (1, 5, 9):
        x = torch.rand(1, 3, t, 2 * s, s) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x)
            assert z.shape == (1, vae.cfg.z_dim, 1 + (t - 1) // 4, 2, 1)
            y = vae.decode(z)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert y.abs().max() <= 1.0


@pytest.mark.parametrize("t", [0, 2, 4, 6, 8])
def test_bad_frame_count_refused(t):
    vae = tiny("2.1")
    with pytest.raises(InputError, match=r"4n\+1"):
        vae.encode(torch.zeros(1, 3, t, 8, 8))


def test_bad_shapes_refused():
    vae = tiny("2.2")
    with pytest.raises(InputError, match="multiple of the VAE stride 16"):
        vae.encode(torch.zeros(1, 3, 5, 16, 24))
    with pytest.raises(InputError, match=r"\[B, 3, T, H, W\]"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))
    with pytest.raises(InputError, match="48"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(InputError, match="out="):
        vae.decode(torch.zeros(1, 48, 2, 1, 1), out=torch.zeros(1, 3, 4, 16, 16))


def test_normalisation_uses_fp32_reciprocal():
    vae = tiny("2.1")
    mu = torch.randn(1, 16, 2, 3, 3)
    mean = torch.tensor(WAN21_VAE_MEAN).view(1, 16, 1, 1, 1)
    inv = 1.0 / torch.tensor(WAN21_VAE_STD, dtype=torch.float32).view(1, 16, 1, 1, 1)
    assert torch.equal(vae.normalize(mu), (mu - mean) * inv)
    assert torch.equal(vae.denormalize(mu), mu / inv + mean)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_chunked_equals_full_sequence(version):
    """Spec §6.6: the whole-clip definition reproduces the chunked cache result to fp32 round-off."""
    vae = tiny(version)
    s = vae.cfg.stride[1]
    x = torch.rand(1, 3, 13, s, 2 * s) * 2 - 1
    with torch.no_grad():
        z, zf = vae.encode(x), vae.encode(x, chunked=False)
        y, yf = vae.decode(z, clamp=False), vae.decode(z, chunked=False, clamp=False)
    assert rel_err(zf, z) < 1e-5 and rel_err(yf, y) < 1e-5  # fp32 round-off of differently shaped convs


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_causality(version):
    """Frames never see the future: a prefix of the clip encodes/decodes to a prefix of the result."""
    vae = tiny(version)
    s = vae.cfg.stride[1]
    x = torch.rand(1, 3, 13, s, s) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert torch.equal(vae.encode(x[:, :, :5]), z[:, :, :2])
        y = vae.decode(z)
        assert torch.equal(vae.decode(z[:, :, :2]), y[:, :, :5])


def test_decode_into_preallocated_out():
    vae = tiny("2.2")
    z = torch.randn(1, 48, 3, 1, 2)
    out = torch.full((1, 3, 9, 16, 32), 7.0)
    with torch.no_grad():
        y = vae.decode(z, out=out)
        assert y.data_ptr() == out.data_ptr()
        assert torch.equal(out, vae.decode(z))


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_reference_kernels_twin(version):
    """The CPU fast kernels (oneDNN conv, sum-of-squares norm) vs upstream's F.conv3d / F.normalize."""
    vae = tiny(version)
    z = torch.randn(1, vae.cfg.z_dim, 3, 2, 2)
    with torch.no_grad():
        fast = vae.decode(z, clamp=False)
        ref = use_reference_kernels(vae).decode(z, clamp=False)
    assert rel_err(fast, ref) < 1e-5  # fp32 round-off only


@pytest.mark.parametrize("chunked", [True, False])
def test_gradients_flow_through_encode_and_decode(chunked):
    vae = tiny("2.2").train()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    y = vae.decode(vae.encode(x, chunked=chunked), chunked=chunked, clamp=False)
    ((y - x) ** 2).mean().backward()
    for part in (vae.encoder.conv1, vae.conv1, vae.conv2, vae.decoder.head[2]):
        assert part.weight.grad is not None and torch.isfinite(part.weight.grad).all()
        assert part.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_batch_equals_per_sample(version):
    vae = tiny(version)
    s = vae.cfg.stride[1]
    x = torch.rand(2, 3, 5, s, s) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
        for i in range(2):
            assert rel_err(vae.encode(x[i:i + 1]), z[i:i + 1]) < 1e-5  # batched convs: fp32 round-off
            assert rel_err(vae.decode(z[i:i + 1]), y[i:i + 1]) < 1e-5
