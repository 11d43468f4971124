"""`--attention auto`: the measured choice of backend, with fake backends and a fake timer
injected through the registry (no GPU, no timing asserts); results unchanged by the choice."""

import pytest
import torch
from tolerance import rel_err

import wanmoe.runtime.attention as A
from wanmoe.errors import InputError
from wanmoe.models.attention import attention_reference, attention_sdpa
from wanmoe.runtime.attention_tune import (AUTO, REGISTRY, AttentionAutotuner, Backend, _per_sample,
                                           _rel_err)


def qkv(b=2, lq=12, lk=9, n=2, hd=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, L, n, hd, generator=g).to(dtype) for L in (lq, lk, lk))


def approx(q, k, v, k_lens=None):  # an inexact kernel: the exact result, perturbed by 1e-3
    return attention_sdpa(q, k, v, k_lens) * (1 + 1e-3)


def wrong(q, k, v, k_lens=None):  # fast and wrong: must never be chosen
    return torch.zeros_like(q)


def broken(q, k, v, k_lens=None):
    raise RuntimeError("no kernel for head dim 16\nsecond line")


def fake_registry(unavailable=()):
    fns = {"slow": attention_reference, "fast": attention_sdpa, "wrong": wrong, "broken": broken,
           "approx": approx}
    return {name: Backend(name, fn, lambda q, name=name: name not in unavailable, exact=name != "approx")
            for name, fn in fns.items()}


class FakeTimer:
    """Seconds per backend function, and a log of what was timed (no clock is read)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.timed = []

    def __call__(self, fn, q, k, v, k_lens):
        name = {attention_reference: "slow", attention_sdpa: "fast", wrong: "wrong", approx: "approx"}[fn]
        self.timed.append((name, tuple(q.shape), q.dtype))
        return self.seconds[name]


SECONDS = {"slow": 3.0, "fast": 1.0, "wrong": 0.01, "approx": 0.1}


def tuner(timer, **kw):
    lines = []
    t = AttentionAutotuner(fake_registry(kw.pop("unavailable", ())), timer, devices=("cpu",),
                           log=lines.append, **kw)
    return t, lines


def test_fastest_accurate_exact_backend_wins_and_is_cached():
    timer = FakeTimer(SECONDS)
    t, lines = tuner(timer)
    q, k, v = qkv()
    kl = torch.tensor([5, 9])
    out = t(q, k, v, kl)
    key = t.key(q, k)
    assert t.choices == {key: "fast"}
    # approx is not a candidate without opting in; wrong was rejected by its error; broken failed
    assert sorted(n for n, *_ in timer.timed) == ["fast", "slow"]
    report = t.reports[key]
    assert report["wrong"]["error"] == pytest.approx(1.0) and "seconds" not in report["wrong"]
    assert report["broken"]["note"].startswith("failed: RuntimeError: no kernel for head dim 16")
    assert report["slow"]["error"] < 1e-6 and report["fast"]["error"] < 1e-6
    # results unchanged: the tuned call returns exactly what the winner returns
    assert torch.equal(out, attention_sdpa(q, k, v, kl))
    assert len(lines) == 1 and "-> fast" in lines[0] and "wrong error 1.0e+00 > 0.05" in lines[0]
    for _ in range(3):  # same key: no timing again, same function
        assert torch.equal(t(q, k, v, kl), out)
    assert len(timer.timed) == 2 and len(lines) == 1


def test_each_shape_dtype_is_tuned_once():
    timer = FakeTimer(SECONDS)
    t, lines = tuner(timer)
    for shape in [dict(lq=12), dict(lq=12), dict(lq=20), dict(lq=12, dtype=torch.float64)]:
        t(*qkv(**shape))
    assert len(t.choices) == 3 and len(lines) == 3
    assert [s for _, s, _ in timer.timed[::2]] == [(2, 12, 2, 16), (2, 20, 2, 16), (2, 12, 2, 16)]
    assert timer.timed[-1][2] == torch.float64


def test_sage_only_when_opted_in_and_its_error_is_measured():
    q, k, v = qkv()
    t, _ = tuner(FakeTimer(SECONDS), sage=True)
    out = t(q, k, v)
    key = t.key(q, k)
    assert t.choices[key] == "approx" and torch.equal(out, approx(q, k, v))
    n = t.check_queries
    want = rel_err(approx(q, k, v)[:, :n], attention_reference(q[:, :n], k, v))  # independent
    assert t.reports[key]["approx"]["error"] == pytest.approx(want, rel=1e-6) and want > 5e-4
    strict, _ = tuner(FakeTimer(SECONDS), sage=True, max_error=1e-4)  # too inexact for this bound
    assert strict(q, k, v) is not None and strict.choices[strict.key(q, k)] == "fast"


def test_ties_follow_registry_order_and_nothing_usable_falls_back_to_sdpa():
    q, k, v = qkv()
    t, _ = tuner(FakeTimer({**SECONDS, "slow": 1.0}))
    t(q, k, v)
    assert t.choices[t.key(q, k)] == "slow"  # first in the registry at equal time
    none, lines = tuner(FakeTimer(SECONDS), unavailable=("slow", "fast", "wrong", "broken"))
    assert torch.equal(none(q, k, v), attention_sdpa(q, k, v))
    assert none.choices[none.key(q, k)] == "sdpa" and "-> sdpa" in lines[0]


def test_cpu_auto_is_exact_sdpa_and_tunes_nothing():
    q, k, v = qkv()
    kl = torch.tensor([3, 9])
    before = dict(AUTO.choices)
    assert torch.equal(A.attention(q, k, v, kl, backend="auto"), attention_sdpa(q, k, v, kl))
    assert torch.equal(A.attention(q, k, v, None, backend="auto+sage"), attention_sdpa(q, k, v))
    assert AUTO.choices == before


def test_dit_auto_equals_sdpa_on_cpu():
    from helpers_dit import TINY, randomize_

    from wanmoe.models.dit import WanDiT

    model = randomize_(WanDiT(TINY), 0).eval()
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t, ctx = torch.tensor([500]), [torch.randn(7, TINY.text_dim, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        A.set_attention(model, "sdpa")
        want = model(x, t, ctx)
        assert A.set_attention(model, "auto") == 2 * TINY.num_layers
        assert all(b.self_attn.attn_fn is AUTO for b in model.blocks)
        assert torch.equal(model(x, t, ctx), want)


def test_registry_kernels_and_per_sample_masking_on_cpu():
    q, k, v = qkv()
    kl = torch.tensor([4, 9])
    ref = attention_reference(q, k, v, kl)
    # unequal key lengths run one sample at a time, each sliced to its length (no mask needed)
    assert rel_err(_per_sample(lambda a, b, c: attention_reference(a, b, c), q, k, v, kl), ref) < 1e-6
    # torch's CPU flash kernel runs the sdpa-flash code path (kernel selection + slicing)
    assert rel_err(REGISTRY["sdpa-flash"].fn(q, k, v, kl), ref) < 1e-5
    assert _rel_err(ref, ref) == 0.0
    for name in ("fa3", "fa2", "cudnn", "sage"):
        assert not REGISTRY[name].available(q)  # CPU tensors
        with pytest.raises(InputError, match=f"attention backend '{name}' cannot run"):
            A.attention(q, k, v, kl, backend=name)
    assert not REGISTRY["sage"].exact and all(REGISTRY[n].exact for n in REGISTRY if n != "sage")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels and the real timer need a "
                    "GPU; the selection logic is tested above with fakes (benchmarks/gpu_check.py "
                    "times every backend on a lent GPU)")
@torch.no_grad()
def test_cuda_autotune_picks_an_accurate_kernel():
    q, k, v = (x.cuda() for x in qkv(b=2, lq=256, lk=300, n=4, hd=128, dtype=torch.bfloat16))
    kl = torch.tensor([200, 300], device="cuda")
    lines = []
    t = AttentionAutotuner(log=lines.append)
    out = t(q, k, v, kl)
    ref = attention_reference(q, k, v, kl)
    assert rel_err(out, ref) < 2e-2 and len(lines) == 1
    for name, b in REGISTRY.items():
        if b.exact and b.available(q):
            assert rel_err(b.fn(q, k, v, kl), ref) < 2e-2, name
