"""runtime.attention: fast backends vs the plain-softmax reference, masking, per-module backends."""

import pytest
import torch
from tolerance import rel_err

from wanmoe.errors import InputError
from wanmoe.runtime import attention as A


def qkv(b=2, lq=9, lk=11, n=3, hd=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, l, n, hd, generator=g).to(dtype) for l in (lq, lk, lk)]


@pytest.mark.parametrize("k_lens", [None, [11, 11], [7, 7], [4, 10]])
def test_sdpa_matches_reference_fp32(k_lens):
    q, k, v = qkv()
    kl = None if k_lens is None else torch.tensor(k_lens)
    ref = A.attention(q, k, v, kl, backend="reference")
    fast = A.attention(q, k, v, kl, backend="sdpa")
    assert fast.shape == q.shape and fast.dtype == torch.float32
    assert rel_err(fast, ref) < 1e-5  # fp32: only summation order differs


@pytest.mark.parametrize("k_lens", [None, [6, 11]])
def test_sdpa_matches_reference_bf16(k_lens):
    q, k, v = qkv(dtype=torch.bfloat16, seed=1)
    kl = None if k_lens is None else torch.tensor(k_lens)
    ref = A.attention(q, k, v, kl, backend="reference")
    fast = A.attention(q, k, v, kl, backend="sdpa")
    assert fast.dtype == ref.dtype == torch.bfloat16
    assert rel_err(fast, ref) < 1e-2  # both round the fp32-accumulated result to bf16 (2^-8 = 3.9e-3)


def test_reference_equals_unmasked_attention_on_the_kept_keys():
    """Masking == dropping the excluded keys: an independent per-sample softmax on sliced keys."""
    q, k, v = qkv(b=2, lk=10)
    kl = torch.tensor([3, 8])
    out = A.attention(q, k, v, kl, backend="reference")
    for b, n in enumerate(kl.tolist()):
        s = torch.einsum("qnd,knd->nqk", q[b], k[b, :n]) / 16**0.5
        want = torch.einsum("nqk,knd->qnd", s.softmax(-1), v[b, :n])
        assert rel_err(out[b], want) < 1e-6


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_masked_keys_do_not_matter(backend):
    q, k, v = qkv()
    kl = torch.tensor([5, 9])
    base = A.attention(q, k, v, kl, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[0, 5:] = 1e3
    v2[1, 9:] = -7.0
    assert torch.equal(A.attention(q, k2, v2, kl, backend=backend), base)


def test_backend_is_set_per_module_not_per_process():
    from wanmoe.models.attention import attention_sdpa
    from wanmoe.models.dit import WanDiT
    from helpers_dit import TINY

    m1, m2 = WanDiT(TINY), WanDiT(TINY)
    assert A.set_attention(m1, "reference") == 2 * TINY.num_layers  # self + cross per block
    assert all(b.self_attn.attn_fn is A.attention_reference for b in m1.blocks)
    assert all(b.cross_attn.attn_fn is attention_sdpa for b in m2.blocks)  # untouched
    with A.using_attention(m2, "reference"):
        assert all(b.self_attn.attn_fn is A.attention_reference for b in m2.blocks)
    assert all(b.self_attn.attn_fn is attention_sdpa for b in m2.blocks)  # restored
    with pytest.raises(InputError, match="unknown"):
        A.set_attention(m1, "xformers")


def test_flash_needs_cuda():
    q, k, v = qkv()
    assert not A.flash_available(q)  # CPU tensor
    with pytest.raises(InputError, match="flash"):
        A.attention(q, k, v, backend="flash")


@pytest.mark.gpu
@torch.no_grad()
def test_fast_backends_match_reference_cuda():
    q, k, v = (t.cuda() for t in qkv(b=2, lq=64, lk=80, n=4, hd=128, dtype=torch.bfloat16))
    kl = torch.tensor([50, 80], device="cuda")
    ref = A.attention(q, k, v, kl, backend="reference")
    assert rel_err(A.attention(q, k, v, kl, backend="sdpa"), ref) < 1e-2
    if A.flash_available(q):
        assert rel_err(A.attention(q, k, v, kl, backend="flash"), ref) < 1e-2
