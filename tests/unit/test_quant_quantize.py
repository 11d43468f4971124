"""Our quantisers: Q8_0 bit-identical to ggml; K-quants decode with gguf's reference; fp8/int8 bounds."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is the reference for block layouts")

from wanmoe.runtime.quant.quantize import (  # noqa: E402
    FP8_MAX, quantize_fp8, quantize_gguf, quantize_int8, quantize_q8_0)


def _w(rows=32, cols=512, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_q8_0_bytes_equal_ggml_reference():
    w = _w()
    w[3] = 0  # all-zero blocks take the d == 0 branch
    w[4, :32] = torch.linspace(-1, 1, 32)  # exact .5 ties after scaling exercise the rounding rule
    ref = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(quantize_q8_0(w).data.numpy(), ref)


# Relative Frobenius error bounds for Gaussian weights, from the quantiser resolution:
# Q8_0 absmax/127 steps (~0.6% measured), Q6_K 6-bit (~2%), Q4_K 4-bit asymmetric (~8%).
@pytest.mark.parametrize("qtype,bound", [("Q8_0", 0.01), ("Q6_K", 0.03), ("Q4_K", 0.10)])
def test_gguf_quantisers_decode_with_reference(qtype, bound):
    w = _w()
    q = quantize_gguf(w, qtype)
    ref = gguf.quants.dequantize(q.data.numpy(), gguf.GGMLQuantizationType[qtype]).reshape(w.shape)
    ours = q.dequantize()
    np.testing.assert_array_equal(ours.numpy(), ref)
    assert ((ours - w).norm() / w.norm()).item() < bound


def test_k_quant_rows_must_fit_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_gguf(torch.randn(4, 128), "Q4_K")
    with pytest.raises(ValueError, match="no quantiser"):
        quantize_gguf(torch.randn(4, 256), "Q3_K")


def test_fp8_per_channel():
    w = _w(16, 64) * torch.logspace(-3, 2, 16)[:, None]  # rows of very different magnitude
    w[5] = 0
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (16, 1)
    assert torch.equal(q.float().abs().amax(1)[[0, 1, 15]], torch.full((3,), FP8_MAX))
    back = q.float() * scale
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normal values; values
    # below the normal range (|q| < 2^-6) have an absolute error <= 2^-10 * scale.
    err = (back - w).abs()
    assert bool((err <= w.abs() * 2**-4 + scale * 2**-10).all())
    assert torch.equal(back[5], torch.zeros(64))


def test_int8_per_channel():
    w = _w(16, 64) * torch.logspace(-3, 2, 16)[:, None]
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    back = q.float() * scale
    assert bool(((back - w).abs() <= scale / 2 * (1 + 1e-5)).all())  # round-to-nearest step
