"""Quantised linears vs their reference twins (dequantise-then-F.linear) and vs gguf's decoder."""

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_rel

from wanmoe.runtime.quant.linear import DequantWorkspace, FP8Linear, GGUFLinear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_gguf

DTYPES = [torch.float32, torch.bfloat16]


def _lin(out_f=64, in_f=256, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_f, out_f)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gguf_linear_equals_reference_twin(qtype, dtype):
    lin = _lin()
    m = GGUFLinear(quantize_gguf(lin.weight, qtype), lin.bias, DequantWorkspace())
    x = torch.randn(2, 5, 256).to(dtype)
    with torch.no_grad():
        y, ref = m(x), m.reference_forward(x)
    assert y.dtype == dtype and y.shape == (2, 5, 64)
    assert torch.equal(y, ref)  # same weight values, same matmul: bit-identical


def test_gguf_linear_matches_gguf_package_decoder():
    gguf = pytest.importorskip("gguf", reason="independent decoder")
    lin = _lin()
    q = quantize_gguf(lin.weight, "Q6_K")
    w_ref = torch.from_numpy(gguf.quants.dequantize(q.data.numpy(), gguf.GGMLQuantizationType.Q6_K).copy())
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(GGUFLinear(q, lin.bias)(x), F.linear(x, w_ref.reshape(64, 256), lin.bias))


def test_workspace_shares_one_buffer_per_shape():
    ws = DequantWorkspace()
    a = GGUFLinear(quantize_gguf(_lin(seed=1).weight, "Q8_0"), None, ws)
    b = GGUFLinear(quantize_gguf(_lin(seed=2).weight, "Q8_0"), None, ws)
    x = torch.randn(4, 256)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert len(ws._buffers) == 1 and ws.nbytes == 64 * 256 * 4
    assert torch.equal(ya, a.reference_forward(x)) and torch.equal(yb, b.reference_forward(x))


@pytest.mark.parametrize("cls", [FP8Linear, Int8Linear])
def test_channel_linears_use_the_workspace(cls):
    ws = DequantWorkspace()
    m = cls.from_linear(_lin(), workspace=ws)
    x = torch.randn(3, 256).bfloat16()
    with torch.no_grad():
        y = m(x)
    assert ws.nbytes == 64 * 256 * 2 and torch.equal(y, m.reference_forward(x))


def test_workspace_keeps_one_device_and_dtype():
    # Moving a model or changing its compute dtype must not keep the old buffers alive.
    ws = DequantWorkspace()
    a = ws.buffer((64, 256), torch.float32, torch.device("cpu"))
    assert ws.buffer((64, 256), torch.float32, "cpu") is a
    ws.buffer((32, 256), torch.float32, "cpu")
    assert ws.nbytes == (64 + 32) * 256 * 4
    b = ws.buffer((64, 256), torch.bfloat16, "cpu")
    assert b.dtype == torch.bfloat16 and ws.nbytes == 64 * 256 * 2  # the float32 set is freed
    ws.clear()
    assert ws.nbytes == 0


def test_gguf_linear_with_autograd_does_not_share_the_buffer():
    ws = DequantWorkspace()
    m = GGUFLinear(quantize_gguf(_lin().weight, "Q8_0"), None, ws)
    x = torch.randn(4, 256, requires_grad=True, generator=torch.Generator().manual_seed(0))
    m(x).sum().backward()
    assert len(ws._buffers) == 0
    # the grad is the column sum of the dequantised weight; measured exact (seeds 0..99), but the
    # backward matmul may sum the 64 rows in another order: allow a few fp32 ulps of the scale
    assert_close_rel(x.grad, m.dequantized(torch.float32).sum(0).expand(4, -1), rtol=1e-6)


@pytest.mark.parametrize("cls", [FP8Linear, Int8Linear])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_linears_equal_reference_twin(cls, dtype):
    lin = _lin()
    m = cls.from_linear(lin)
    x = torch.randn(7, 256).to(dtype)
    with torch.no_grad():
        y = m(x)
        w = (m.weight.float() * m.weight_scale).to(dtype)  # independent formula: q * scale
        assert y.dtype == dtype and torch.equal(y, m.reference_forward(x))
        assert torch.equal(y, F.linear(x, w, lin.bias.to(dtype)))


@pytest.mark.parametrize("make", [lambda lin: GGUFLinear(quantize_gguf(lin.weight, "Q4_K"), lin.bias, DequantWorkspace()),
                                  FP8Linear.from_linear, Int8Linear.from_linear])
def test_non_contiguous_input_and_bias_dtype(make):
    lin = _lin()
    lin.bias.data = lin.bias.data.bfloat16()  # a bf16-stored bias under fp32 compute is cast like nn.Linear's
    m = make(lin)
    x = torch.randn(256, 6)
    with torch.no_grad():
        y = m(x.t())  # [6, 256] strided view (vs a contiguous copy BLAS may round differently)
        assert y.dtype == torch.float32 and torch.equal(y, m.reference_forward(x.t()))
        assert torch.equal(y, F.linear(x.t(), m.dequantized(torch.float32), lin.bias.float()))


def test_fp8_state_dict_uses_file_layout():
    m = FP8Linear.from_linear(_lin())
    sd = m.state_dict()
    assert set(sd) == {"weight", "weight_scale", "bias"}
    assert sd["weight"].dtype == torch.float8_e4m3fn and sd["weight_scale"].shape == (64, 1)


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        FP8Linear(torch.zeros(4, 4), torch.ones(4))
    with pytest.raises(ValueError, match="int8"):
        Int8Linear(torch.zeros(4, 4, dtype=torch.int8), torch.ones(3))


@pytest.mark.gpu
def test_fp8_scaled_mm_close_to_weight_only():
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) < (8, 9):
        pytest.skip("torch._scaled_mm needs fp8 tensor cores (compute capability >= 8.9)")
    lin = _lin(256, 512).to(dev)
    m = FP8Linear.from_linear(lin, use_scaled_mm=True)
    x = torch.randn(64, 512, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        y = m(x)
        ref = m.reference_forward(x).float()
    # The input is also rounded to e4m3 (3 mantissa bits, ~3% relative per element); the
    # dot products average that out to a few percent of the output norm.
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < 0.05
