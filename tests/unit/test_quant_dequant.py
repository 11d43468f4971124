"""Our torch GGUF dequantisers vs the `gguf` package's numpy reference, bit for bit (fp32)."""

import numpy as np
import pytest
import torch
from helpers_quant import F16_FIELDS, random_blocks

gguf = pytest.importorskip("gguf", reason="the gguf package is the reference for block layouts")

from wanmoe.runtime.quant.gguf_dequant import GGUFWeight, dequantize  # noqa: E402

BLOCK_TYPES = list(F16_FIELDS)
REF_QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # gguf-py has quantisers for these


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_random_blocks_match_gguf_reference(qtype):
    rows, row_len = 6, 512
    raw = random_blocks(qtype, rows, row_len)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    ours = dequantize(torch.from_numpy(raw), qtype, (rows, row_len))
    assert ours.dtype == torch.float32 and ours.shape == (rows, row_len)
    np.testing.assert_array_equal(ours.numpy(), ref)  # exact: same fp32 operations


@pytest.mark.parametrize("qtype", REF_QUANTIZABLE)
def test_reference_quantised_data_matches(qtype):
    w = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype])
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(dequantize(torch.from_numpy(raw), qtype, w.shape).numpy(), ref)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_types(qtype):
    t = torch.randn(4, 8)
    stored = {"F32": t, "F16": t.half(), "BF16": t.bfloat16()}[qtype]
    raw = stored.contiguous().view(torch.uint8)
    assert torch.equal(dequantize(raw, qtype, (4, 8)), stored.float())


def test_output_dtype_and_buffer_equal_cast_of_fp32():
    raw = torch.from_numpy(random_blocks("Q4_K", 4, 256, seed=3))
    w32 = dequantize(raw, "Q4_K", (4, 256))
    assert torch.equal(dequantize(raw, "Q4_K", (4, 256), torch.bfloat16), w32.bfloat16())
    buf = torch.empty(4, 256, dtype=torch.bfloat16)
    out = dequantize(raw, "Q4_K", (4, 256), out=buf)
    assert out.data_ptr() == buf.data_ptr() and torch.equal(buf, w32.bfloat16())


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_out_buffer_equals_cast_of_fp32(qtype):
    # The block functions write their last operation straight into a contiguous `out`; a
    # non-contiguous one gets a copy. Either way: the float32 values rounded once into out's dtype.
    raw = torch.from_numpy(random_blocks(qtype, 4, 512, seed=5))
    w32 = dequantize(raw, qtype, (4, 512))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        buf = torch.full((4, 512), float("nan"), dtype=dtype)
        assert dequantize(raw, qtype, (4, 512), out=buf) is buf and torch.equal(buf, w32.to(dtype))
    strided = torch.empty(512, 4, dtype=torch.bfloat16).t()
    dequantize(raw, qtype, (4, 512), out=strided)
    assert torch.equal(strided, w32.bfloat16())
    with pytest.raises(ValueError, match=r"out buffer has shape \(512, 4\)"):
        dequantize(raw, qtype, (4, 512), out=torch.empty(512, 4))


def test_gguf_weight_checks_byte_count():
    raw = torch.from_numpy(random_blocks("Q8_0", 2, 64))
    w = GGUFWeight(raw, "Q8_0", (2, 64))
    assert w.nbytes == 2 * 2 * 34 and w.data.shape == (2, 68)
    with pytest.raises(ValueError, match="needs 136 uint8 bytes"):
        GGUFWeight(raw[:1], "Q8_0", (2, 64))
    with pytest.raises(ValueError, match="not a multiple"):
        GGUFWeight(raw, "Q8_0", (1, 100))


def test_unsupported_type_is_named():
    with pytest.raises(ValueError, match="IQ4_XS"):
        dequantize(torch.zeros(136, dtype=torch.uint8), "IQ4_XS", (1, 256))
