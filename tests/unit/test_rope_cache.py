"""Cached RoPE tables and key-length tensors: the same bits as building them every forward.

The reference rotation below is the official formula written independently (complex128
product of the float64 input, one rounding to float32), not a call into wanmoe.models.rope.
"""

import pytest
import torch
from helpers_dit import TINY, randomize_

import wanmoe.models.attention as A
import wanmoe.models.dit as dit_module
import wanmoe.models.rope as R
from wanmoe.models.dit import WanDiT


def _reference_rotation(x, table):
    b, s, n, hd = x.shape
    xc = torch.view_as_complex(x.double().reshape(b, s, n, hd // 2, 2))
    return torch.view_as_real(xc * table.view(1, s, 1, hd // 2)).flatten(3).float()


def _reference_table(grid, split, seq_len):
    """Official formula per axis: angle = p * 10000^(-2j/D), rows past the grid are 1."""
    rows = []
    for p in range(grid[0] * grid[1] * grid[2]):
        pos = (p // (grid[1] * grid[2]), (p // grid[2]) % grid[1], p % grid[2])
        ang = [pos[a] / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
               for a, d in enumerate(split)]
        rows.append(torch.polar(torch.ones(sum(d // 2 for d in split), dtype=torch.float64),
                                torch.cat(ang)))
    table = torch.stack(rows)
    pad = torch.ones(seq_len - len(rows), table.shape[1], dtype=table.dtype)
    return torch.cat([table, pad])


@pytest.fixture(autouse=True)
def _empty_caches():
    R.clear_rope_cache()
    yield
    R.clear_rope_cache()


def test_table_is_cached_per_grid_and_equals_the_formula():
    a = R.rope_table((2, 3, 4), (16, 16, 16), 30)
    assert R.rope_table((2, 3, 4), (16, 16, 16), 30) is a  # built once
    assert R.rope_table((2, 3, 4), (16, 16, 16), 24) is not a  # another seq_len, another table
    assert R.rope_table((2, 4, 3), (16, 16, 16), 30) is not a  # another grid
    assert R.rope_table((2, 3, 4), (16, 16, 16), 30, device="cpu") is a  # "cpu" == None
    ref = _reference_table((2, 3, 4), (16, 16, 16), 30)
    assert a.dtype == torch.complex128 and a.shape == (30, 24)
    torch.testing.assert_close(a, ref, rtol=0, atol=1e-15)  # pow vs ** may differ in the last ulp
    assert torch.equal(a, R.build_rope_table((2, 3, 4), (16, 16, 16), 30))  # cache = fresh build


@pytest.mark.parametrize("chunk", [R._CHUNK_TOKENS, 7])  # 7: several chunks and a ragged tail
def test_in_place_rotation_is_bit_identical_to_the_complex_product(monkeypatch, chunk):
    monkeypatch.setattr(R, "_CHUNK_TOKENS", chunk)
    table = R.rope_table((3, 4, 5), (44, 42, 42), 64)  # 60 tokens + 4 padding rows
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(2, 64, 3, 128, generator=g) * scale
        y = R.rope_apply(x, table)
        assert y.dtype == torch.float32
        assert torch.equal(y, _reference_rotation(x, table))
        assert torch.equal(y[:, 60:], x[:, 60:])  # padding rows pass through


def test_rotation_leaves_its_input_alone_and_backpropagates():
    table = R.rope_table((2, 3, 4), (16, 16, 16), 24)
    for dtype in (torch.float32, torch.float64):  # float64: .to() alone would not copy
        x = torch.randn(1, 24, 2, 48, dtype=dtype)
        before = x.clone()
        R.rope_apply(x, table)
        assert torch.equal(x, before)
    x = torch.randn(1, 24, 2, 48, requires_grad=True)
    R.rope_apply(x, table).pow(2).sum().backward()  # a rotation keeps norms: d|Rx|^2/dx = 2x
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-5, atol=1e-5)


def test_real_view_rotation_is_bit_identical():
    """The compile-friendly form (float64 cos/sin view) gives the complex form's bits."""
    table = R.rope_table((3, 8, 6), (16, 16, 16), 150)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(2, 150, 2, 48, generator=g) * 10
        assert torch.equal(R.rope_apply(x, torch.view_as_real(table)), _reference_rotation(x, table))


@torch.no_grad()
def test_dit_builds_each_table_once_and_outputs_the_same_bits(monkeypatch):
    model = randomize_(WanDiT(TINY)).eval()
    x, t = torch.randn(1, 16, 3, 8, 6), torch.tensor([700])
    ctx = [torch.randn(5, 32)]
    fresh = []

    def fresh_table(grid, split, seq_len, device=None):  # the uncached path, every forward
        fresh.append(grid)
        return R.build_rope_table(grid, split, seq_len, device)

    with monkeypatch.context() as m:
        m.setattr(dit_module, "rope_table", fresh_table)
        ref = [model(x, t, ctx), model(x, t, ctx, seq_len=80)]
    assert len(fresh) == 2
    builds = []
    real_build = R.build_rope_table
    monkeypatch.setattr(R, "build_rope_table", lambda *a: builds.append(a[0]) or real_build(*a))
    for _ in range(3):
        out = [model(x, t, ctx), model(x, t, ctx, seq_len=80)]
        assert all(torch.equal(o, r) for o, r in zip(out, ref))
    assert builds == [(3, 4, 3), (3, 4, 3)]  # one per seq_len (36 and 80), not one per forward


def test_key_mask_and_cu_seqlens_cached_and_right():
    m = A.key_mask([3, 5], 6, "cpu")
    assert A.key_mask((3, 5), 6, torch.device("cpu")) is m  # cached across call styles
    assert m.tolist() == [[j < n for j in range(6)] for n in (3, 5)]
    cu = A.cu_seqlens([3, 5, 2], "cpu")
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 8, 10]
    assert A.cu_seqlens((3, 5, 2), "cpu") is cu


def test_sdpa_with_unequal_lengths_uses_the_cached_mask():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 6, 2, 8, generator=g) for _ in range(3))
    kl = torch.tensor([4, 6])
    out = A.attention_sdpa(q, k, v, kl)
    info = A._key_mask.cache_info()
    out2 = A.attention_sdpa(q, k, v, kl)
    assert A._key_mask.cache_info().hits == info.hits + 1 and A._key_mask.cache_info().misses == info.misses
    assert torch.equal(out, out2)
    torch.testing.assert_close(out, A.attention_reference(q, k, v, kl), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@torch.no_grad()
def test_padded_forward_on_cuda_has_no_sync_per_attention_call():
    """After a warm-up forward (tables and masks cached), the blocks run without a host sync."""
    model = randomize_(WanDiT(TINY)).eval().cuda()
    x, t, ctx = torch.randn(1, 16, 3, 8, 6, device="cuda"), torch.tensor([700], device="cuda"), \
        [torch.randn(5, 32, device="cuda")]
    model(x, t, ctx, seq_len=80)
    rope = R.rope_table((3, 4, 3), TINY.rope_split, 80, "cuda")  # patch (1, 2, 2): 36 tokens
    h = torch.randn(1, 80, TINY.dim, device="cuda")
    e0 = torch.randn(1, 1, 6, TINY.dim, device="cuda")
    c = torch.randn(1, TINY.text_len, TINY.dim, device="cuda")
    k_lens = torch.full((1,), 36, dtype=torch.long)  # on the CPU, as the DiT makes it
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for block in model.blocks:
            h = block(h, e0, c, rope, k_lens, torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
