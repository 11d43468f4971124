"""VAE building blocks against the formulas of spec §6.1 / §6.3 / §6.6, computed independently."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers_vae import one_thread  # noqa: F401  (one_thread: autouse fixture)
from tolerance import assert_close_rel, rel_err

from wanmoe.vae.blocks import (AvgDown3D, CausalConv3d, DupUp3D, Resample, RMSNorm, conv3d,
                               l2_normalize_channels)
from wanmoe.vae.cache import CausalCache
from wanmoe.vae.wan22 import patchify, unpatchify


def test_rms_norm_is_l2_normalise_times_sqrt_c():
    torch.manual_seed(0)
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(6, 1, 1, 1))
    x = torch.randn(2, 6, 3, 4, 5)
    x64 = x.double()
    ref = x64 / x64.pow(2).sum(1, keepdim=True).sqrt() * 6 ** 0.5 * norm.gamma.double()  # not mean-square + eps
    assert rel_err(norm(x).double(), ref) < 1e-6
    # sqrt(sum x^2) vs linalg norm: fp32 round-off, measured <= 1.4e-7 (seeds 0..299)
    assert_close_rel(l2_normalize_channels(x, True), F.normalize(x, dim=1), rtol=5e-7)


def _spec_causal_conv(x, conv):
    """Spec §6.1: pad W and H symmetrically, 2*p_t zero frames in front, then a plain conv."""
    pt2, ph, pw = conv.causal_pad
    return F.conv3d(F.pad(x, (pw, pw, ph, ph, pt2, 0)), conv.weight, conv.bias, conv.stride)


@pytest.mark.parametrize("split", [(1, 4, 4), (1, 1, 1, 1, 1, 1, 1, 1, 1), (2, 3, 4)])
def test_causal_conv_chunked_equals_full_sequence(split):
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, sum(split), 6, 7)
    full = conv(x)
    assert rel_err(full, _spec_causal_conv(x, conv)) < 1e-6
    cache, outs, t = CausalCache(), [], 0
    for n in split:
        outs.append(conv(x[:, :, t:t + n], cache))
        cache.next_chunk()
        t += n
    assert rel_err(torch.cat(outs, 2), full) < 1e-6


def test_fast_conv_matches_reference_twin():
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 4, 6, 10, 10), torch.randn(8, 4, 3, 3, 3), torch.randn(8)
    for stride in ((1, 1, 1), (2, 1, 1)):
        assert rel_err(conv3d(x, w, b, stride, True), F.conv3d(x, w, b, stride)) < 1e-6


def test_downsample3d_temporal_rule():
    """[y0] + stride-2 windows (y0,y1,y2), (y2,y3,y4), ...; chunked 1+4+4 gives the same."""
    torch.manual_seed(0)
    rs = Resample(4, "downsample3d")
    x = torch.randn(1, 4, 9, 8, 8)
    b, c, t, h, w = x.shape
    y = rs.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).view(b, t, c, 4, 4).permute(0, 2, 1, 3, 4)
    tc = rs.time_conv
    ref = [y[:, :, 0]] + [F.conv3d(y[:, :, i:i + 3], tc.weight, tc.bias)[:, :, 0] for i in range(0, t - 2, 2)]
    ref = torch.stack(ref, 2)
    assert rel_err(rs(x), ref) < 1e-6
    cache = CausalCache()
    outs = []
    for sl in (slice(0, 1), slice(1, 5), slice(5, 9)):
        outs.append(rs(x[:, :, sl], cache))
        cache.next_chunk()
    assert rel_err(torch.cat(outs, 2), ref) < 1e-6


def test_upsample3d_temporal_rule():
    """Frame 0 passes alone; frames 1.. go through a causal conv of their own, halves interleaved."""
    torch.manual_seed(0)
    rs = Resample(4, "upsample3d", out_dim=4)
    z = torch.randn(1, 4, 4, 3, 3)
    tc = rs.time_conv
    conv = F.conv3d(F.pad(z[:, :, 1:], (0, 0, 0, 0, 2, 0)), tc.weight, tc.bias)  # [1, 8, 3, 3, 3]
    frames = [z[:, :, 0]] + [conv[:, half * 4:(half + 1) * 4, i] for i in range(3) for half in (0, 1)]
    t_up = torch.stack(frames, 2)  # [1, 4, 7, 3, 3]
    b, c, t, h, w = t_up.shape
    ref = rs.resample(t_up.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).view(b, t, 4, 6, 6).permute(0, 2, 1, 3, 4)
    assert rel_err(rs(z), ref) < 1e-6
    cache, outs = CausalCache(), []
    for i in range(4):
        outs.append(rs(z[:, :, i:i + 1], cache))
        cache.next_chunk()
    assert rel_err(torch.cat(outs, 2), ref) < 1e-6


def test_avgdown3d_formula():
    """Front zero pad to a multiple of ft; channel c*F + i*fs^2 + j*fs + k; average groups of Cin*F/Cout."""
    torch.manual_seed(0)
    cin, cout, ft, fs = 4, 8, 2, 2
    x = torch.randn(1, cin, 3, 4, 6)
    xp = torch.cat([torch.zeros(1, cin, 1, 4, 6), x], 2)  # T=3 -> 4
    big_f = ft * fs * fs
    folded = torch.zeros(1, cin * big_f, 2, 2, 3)
    for c, i, j, k in itertools.product(range(cin), range(ft), range(fs), range(fs)):
        folded[:, c * big_f + i * fs * fs + j * fs + k] = xp[:, c, i::ft, j::fs, k::fs]
    group = cin * big_f // cout
    ref = folded.view(1, cout, group, 2, 2, 3).mean(2)
    assert rel_err(AvgDown3D(cin, cout, ft, fs)(x), ref) < 1e-6


@pytest.mark.parametrize("cin, cout", [(4, 4), (8, 4)])
def test_dupup3d_formula(cin, cout):
    """Output[o, t*ft+i, h*fs+j, w*fs+k] = input[(o*F + i*fs^2 + j*fs + k) // r]; first chunk drops ft-1."""
    torch.manual_seed(0)
    ft, fs = 2, 2
    big_f = ft * fs * fs
    r = cout * big_f // cin
    x = torch.randn(1, cin, 2, 3, 2)
    ref = torch.zeros(1, cout, 4, 6, 4)
    for o, i, j, k in itertools.product(range(cout), range(ft), range(fs), range(fs)):
        ref[:, o, i::ft, j::fs, k::fs] = x[:, (o * big_f + i * fs * fs + j * fs + k) // r]
    up = DupUp3D(cin, cout, ft, fs)
    assert torch.equal(up(x, first_chunk=False), ref)
    assert torch.equal(up(x, first_chunk=True), ref[:, :, ft - 1:])


def test_patchify_channel_order_is_c_w_h():
    """Spec §6.3: new channel c*4 + r*2 + q, r the width offset and q the height offset."""
    x = torch.randn(2, 3, 2, 6, 8)
    p = patchify(x)
    assert p.shape == (2, 12, 2, 3, 4)
    for c, r, q in itertools.product(range(3), range(2), range(2)):
        assert torch.equal(p[:, c * 4 + r * 2 + q], x[:, c, :, q::2, r::2])
    assert torch.equal(unpatchify(p), x)
    out = torch.zeros(2, 3, 4, 6, 8)
    unpatchify(p, out=out[:, :, 1:3])  # a time slice of a larger video, as the chunked decode writes
    assert torch.equal(out[:, :, 1:3], x) and not out[:, :, [0, 3]].any()
