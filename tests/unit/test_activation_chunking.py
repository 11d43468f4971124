"""Sequence-chunked DiT blocks and head (`WanBlock.forward_chunked`, `layers.modulated_norm`).

The chunked path runs the per-token work (norms, modulation, q/k/v/o, cross-attention, FFN,
head) a slice of tokens at a time; only the GEMM row count changes, so outputs must equal the
whole-sequence path within fp32 rounding. The tiny models here are far below the default
threshold (8192 tokens), so the tests force chunking with a threshold of 1 and a chunk size
that does not divide the token count (a short last chunk).
"""

import pytest
import torch
from helpers_dit import TINY, randomize_
from tolerance import assert_close_rel

from wanmoe.errors import InputError
from wanmoe.models.dit import WanBlock, WanDiT
from wanmoe.models.layers import CHUNK_THRESHOLD, WanLayerNorm, modulated_norm
from wanmoe.runtime.quant.apply import quantize_model

# Measured here (torch 2.13 CPU), chunked vs whole-sequence output, max|diff| / max|ref|: fp32
# 0.0 in every case below (bit-identical); bf16 compute 1.9e-3 (fp8 weights 1.9e-3), one chunk
# covering the whole sequence 0.0: some bf16 kernel rounds differently on a token slice, and a
# flipped bf16 rounding is 2^-8 relative. The fp32 bound leaves room for other BLAS blockings.
RTOL = {torch.float32: 2e-6, torch.bfloat16: 1e-2}


def model(dtype, per_token_time=False):
    return randomize_(WanDiT(TINY)).set_compute_dtype(dtype).set_per_token_time(per_token_time).eval()


def inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 3, 6, 10, generator=g)  # 3 * 3 * 5 = 45 tokens
    t = torch.tensor([937.0, 412.0][:batch])
    ctx = [torch.randn(n, TINY.text_dim, generator=g) for n in (7, 13)[:batch]]
    return x, t, ctx


def counting(monkeypatch):
    calls = []
    original = WanBlock.forward_chunked

    def spy(self, *a, **k):
        calls.append(a[0].shape[1])
        return original(self, *a, **k)

    monkeypatch.setattr(WanBlock, "forward_chunked", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "padded", "per_token_time"])
@torch.no_grad()
def test_chunked_equals_whole_sequence(monkeypatch, dtype, case):
    m = model(dtype, per_token_time=case == "per_token_time")
    x, t, ctx = inputs()
    seq_len = 52 if case == "padded" else None  # 7 padded tokens: masked keys (k_lens)
    ref = m(x, t, ctx, seq_len=seq_len)
    calls = counting(monkeypatch)
    out = m.set_activation_chunking(threshold=1, tokens=8)(x, t, ctx, seq_len=seq_len)
    assert calls == [seq_len or 45] * TINY.num_layers  # every block took the chunked path
    assert_close_rel(out, ref, RTOL[dtype], f"{case} {dtype}")


@torch.no_grad()
def test_chunked_with_quantised_linears():
    # fp8 weights (the one weight path: dequantise per call) give the same values in chunks
    m = quantize_model(model(torch.bfloat16), "fp8")
    x, t, ctx = inputs()
    ref = m(x, t, ctx)
    out = m.set_activation_chunking(threshold=1, tokens=16)(x, t, ctx)
    assert_close_rel(out, ref, RTOL[torch.bfloat16], "fp8 chunked")


@torch.no_grad()
def test_threshold_decides_and_defaults_leave_small_runs_unchunked(monkeypatch):
    calls = counting(monkeypatch)
    m = model(torch.float32)
    x, t, ctx = inputs()
    m(x, t, ctx)
    assert calls == [] and WanBlock.chunk_threshold == CHUNK_THRESHOLD >= 8192
    m.set_activation_chunking(threshold=46, tokens=4)
    m(x, t, ctx)  # 45 tokens: below
    assert calls == []
    m(x, t, ctx, seq_len=46)  # 46 tokens: at the threshold
    assert calls == [46, 46]
    with pytest.raises(InputError, match="threshold"):
        m.set_activation_chunking(threshold=0)


def test_autograd_runs_unchunked_and_backpropagates(monkeypatch):
    calls = counting(monkeypatch)
    m = model(torch.float32).set_activation_chunking(threshold=1, tokens=8)
    x, t, ctx = inputs(batch=1)
    out = m(x, t, ctx)
    out.square().mean().backward()  # in-place updates would break the recorded graph
    assert calls == []
    assert m.blocks[0].ffn[0].weight.grad is not None
    assert m.blocks[0].modulation.grad.abs().sum() > 0


def test_modulated_norm_in_place_is_the_formula_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    norm = WanLayerNorm(64)
    for xdtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 33, 64, generator=g).to(xdtype)
        scale, shift = torch.randn(2, 1, 64, generator=g), torch.randn(2, 33, 64, generator=g)
        ref = norm(x).float() * (1 + scale) + shift
        with torch.no_grad():
            assert torch.equal(modulated_norm(norm, x, scale, shift), ref)
        assert torch.equal(modulated_norm(norm, x, scale, shift), ref)  # grad mode: out of place
