"""fp8 matmul with row-wise activation scales (`--fp8-matmul`): the math, the path choice, the
fallback. The math is checked on CPU through a float32 emulation of the quantise-matmul (and
torch's CPU `_scaled_mm` kernel where this torch has one); the CUDA kernel only on a GPU."""

import warnings

import pytest
import torch
from tolerance import rel_err

import wanmoe.runtime.quant.linear as L
from wanmoe.errors import InputError
from wanmoe.request import runtime_config
from wanmoe.runtime.quant.apply import quantize_model, set_fp8_matmul
from wanmoe.runtime.quant.linear import FP8Linear, fp8_path, quantize_rows, scaled_mm_emulated
from wanmoe.runtime.quant.quantize import quantize_fp8

M, K, N = 24, 64, 48
FP8_REL = 2.0**-4  # e4m3: 3 mantissa bits, round to nearest -> at most 2^-4 relative per value


def gen(seed):
    return torch.Generator().manual_seed(seed)


def activations(seed=0, spread=3.0):
    """[M, K] activations whose rows span 10^-spread .. 10^spread in magnitude (like DiT tokens
    after modulation: a few huge rows, many small ones)."""
    x = torch.randn(M, K, generator=gen(seed))
    return x * torch.logspace(-spread, spread, M).reshape(M, 1)


@pytest.fixture(scope="module")
def layer():
    w = torch.randn(N, K, generator=gen(1)) * 0.05
    b = torch.randn(N, generator=gen(2))
    return w, b


def dequant_matmul(x, wq, ws, bias=None):
    """Today's path written out independently: w = q * scale in fp32, x @ wᵀ (+ b) in fp32."""
    y = x.float() @ (wq.float() * ws.reshape(-1, 1)).t()
    return y if bias is None else y + bias


def test_quantize_rows_scales_each_row_to_the_fp8_range():
    x = activations()
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (M, 1) and s.dtype == torch.float32
    # each row's largest magnitude lands exactly on 448 (the largest finite e4m3)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((M,), 448.0))
    back = q.float() * s
    assert ((back - x).abs() <= FP8_REL * x.abs() + s * 2.0**-9).all()  # 2^-9: e4m3 subnormal step
    zq, zs = quantize_rows(torch.zeros(3, K))  # an all-zero row (padding) stays zero, no NaN
    assert torch.equal(zq.float(), torch.zeros(3, K)) and torch.isfinite(zs).all()


def test_emulation_is_exact_on_representable_activations(layer):
    # rows that are e4m3 values times a power of two, row max 448: quantisation is lossless, so
    # the emulated fp8 matmul must equal the dequant matmul (up to fp32 summation order)
    w, _ = layer
    wq, ws = quantize_fp8(w)
    base = (torch.randn(M, K, generator=gen(3)) * 100).clamp(-440, 440).to(torch.float8_e4m3fn).float()
    base[:, 0] = 448.0
    x = base * (2.0 ** torch.arange(-6, M - 6, dtype=torch.float32)).reshape(M, 1)
    xq, xs = quantize_rows(x)
    assert torch.equal(xq.float() * xs, x)
    y = scaled_mm_emulated(xq, xs, wq, ws, torch.float32)
    assert rel_err(y, dequant_matmul(x, wq, ws)) < 1e-6


def test_rowwise_error_vs_dequant_is_bounded_on_every_row(layer):
    w, _ = layer
    wq, ws = quantize_fp8(w)
    x = activations(4)
    ref = dequant_matmul(x, wq, ws)
    y = scaled_mm_emulated(*quantize_rows(x), wq, ws, torch.float32)
    row_err = ((y - ref).norm(dim=1) / ref.norm(dim=1))
    print(f"row-wise fp8 activations: relative error per row max {row_err.max():.4f}, "
          f"mean {row_err.mean():.4f}")
    assert row_err.max() < 0.05 and row_err.mean() < 0.035
    # the per-tensor scale (one amax for all tokens) loses the small rows entirely: the reason
    # for row-wise scales
    s = x.abs().amax() / 448.0
    y_tensor = scaled_mm_emulated((x / s).to(torch.float8_e4m3fn), s.expand(M, 1), wq, ws, torch.float32)
    tensor_err = ((y_tensor - ref).norm(dim=1) / ref.norm(dim=1))
    assert tensor_err.max() > 0.5 > 10 * row_err.max()


def test_path_choice_rules(monkeypatch):
    cuda = torch.device("cuda", 0)
    cpu = torch.device("cpu")
    monkeypatch.setattr(L, "_cuda_capability", lambda i: (9, 0))  # H100 / H200
    assert fp8_path("auto", cuda, torch.bfloat16, K, N) == "scaled"
    assert fp8_path("auto", cuda, torch.float32, K, N) == "dequant"  # row-wise scaling writes bf16
    assert fp8_path("auto", cuda, torch.bfloat16, K + 8, N) == "dequant"  # dims must be % 16
    assert fp8_path("dequant", cuda, torch.bfloat16, K, N) == "dequant"
    monkeypatch.setattr(L, "_cuda_capability", lambda i: (8, 0))  # A100: no fp8 tensor cores
    assert fp8_path("auto", cuda, torch.bfloat16, K, N) == "dequant"
    assert fp8_path("scaled", cuda, torch.bfloat16, K, N) == "dequant"
    monkeypatch.setattr(L, "_cuda_capability", lambda i: (8, 9))  # Ada (L40S, RTX 4090)
    assert fp8_path("auto", cuda, torch.bfloat16, K, N) == "scaled"
    assert fp8_path("auto", cpu, torch.float32, K, N) == "dequant"  # CPU auto: today's path
    assert fp8_path("scaled", cpu, torch.float32, K, N) == "scaled"  # torch's CPU kernel, forced


def test_layer_modes_on_cpu(layer):
    w, b = layer
    x = activations(5).reshape(2, M // 2, K)
    modes = {m: FP8Linear(*quantize_fp8(w), b, matmul=m) for m in ("dequant", "auto", "scaled")}
    with torch.no_grad():
        out = {m: lin(x) for m, lin in modes.items()}
    assert torch.equal(out["auto"], out["dequant"])  # CPU auto is the dequant path, bit for bit
    assert modes["auto"].path(x) == "dequant" and modes["scaled"].path(x) == "scaled"
    wq, ws = modes["scaled"].weight, modes["scaled"].weight_scale
    emu = scaled_mm_emulated(*quantize_rows(x.reshape(-1, K)), wq, ws, torch.float32) + b
    assert rel_err(out["scaled"], emu.reshape(2, M // 2, N)) < 1e-5  # torch's CPU kernel = the emulation
    assert rel_err(out["dequant"], dequant_matmul(x, wq, ws, b)) < 1e-5
    assert 0 < rel_err(out["scaled"], out["dequant"]) < 0.05
    # autograd (training, tests of gradients) always takes the dequant path: no _scaled_mm backward
    xg = x.clone().requires_grad_(True)
    assert modes["scaled"].path(xg) == "dequant"
    with pytest.raises(ValueError, match="fp8 matmul"):
        FP8Linear(*quantize_fp8(w), matmul="fast")


def test_choice_made_once_per_device_and_dtype(layer, monkeypatch):
    w, b = layer
    calls = []
    real = L.fp8_path
    monkeypatch.setattr(L, "fp8_path", lambda *a: calls.append(a) or real(*a))
    lin = FP8Linear(*quantize_fp8(w), b, matmul="scaled")
    with torch.no_grad():
        for _ in range(3):
            lin(activations(6))
        lin(activations(6).bfloat16())
    assert [(c[1].type, c[2]) for c in calls] == [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    lin.matmul = "dequant"  # a new mode forgets the choices
    assert lin.path(activations(6)) == "dequant"


def test_a_refusing_kernel_falls_back_once_with_a_warning(layer, monkeypatch):
    w, b = layer
    lin = FP8Linear(*quantize_fp8(w), b, matmul="scaled")
    ref = FP8Linear(*quantize_fp8(w), b)
    calls = []

    def refuse(*a, **k):
        calls.append(1)
        raise RuntimeError("Invalid scaling configuration\nmore")

    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    x = activations(7)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1, y2 = lin(x), lin(x)
    assert len(calls) == 1 and len(caught) == 1 and "Invalid scaling configuration" in str(caught[0].message)
    assert torch.equal(y1, ref(x)) and torch.equal(y2, y1)


def test_dit_with_scaled_fp8_matmul_stays_close():
    from helpers_dit import TINY, randomize_

    from wanmoe.models.dit import WanDiT

    x = torch.randn(1, 16, 2, 4, 4, generator=gen(8))
    t, ctx = torch.tensor([700]), [torch.randn(10, TINY.text_dim, generator=gen(9))]
    model = quantize_model(randomize_(WanDiT(TINY), 0).eval(), "fp8")
    with torch.no_grad():
        base = model(x, t, ctx)
        assert set_fp8_matmul(model, "scaled") == 10 * TINY.num_layers  # q,k,v,o x 2 + ffn.0, ffn.2
        scaled = model(x, t, ctx)
    err = rel_err(scaled, base)
    print(f"tiny DiT forward, row-wise fp8 activations vs dequant: {err:.4f} relative")
    assert 0 < err < 0.05


def test_runtime_flag_is_checked():
    assert runtime_config("cpu", fp8_matmul="auto").fp8_matmul == "auto"
    assert runtime_config("cpu").fp8_matmul == "dequant"
    with pytest.raises(InputError, match="fp8 matmul 'fast'"):
        runtime_config("cpu", fp8_matmul="fast")


def _has_fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _has_fp8_gpu(), reason="the torch._scaled_mm CUDA kernel needs a GPU with "
                    "fp8 tensor cores (compute capability >= 8.9); on CPU the math is checked "
                    "through the float32 emulation above (and benchmarks/gpu_check.py runs it)")
def test_cuda_scaled_mm_matches_the_emulation(layer):
    w, b = layer
    dev = torch.device("cuda")
    lin = FP8Linear(*quantize_fp8(w.to(dev)), b.to(dev), matmul="auto")
    x = activations(10).to(dev, torch.bfloat16)
    with torch.no_grad():
        y = lin(x)
    assert lin.path(x) == "scaled"
    emu = scaled_mm_emulated(*quantize_rows(x), lin.weight, lin.weight_scale, torch.float32) + b.to(dev)
    assert rel_err(y.float(), emu) < 1e-2  # one bf16 rounding of the output
    lin.matmul = "dequant"
    with torch.no_grad():
        assert rel_err(y.float(), lin(x).float()) < 0.05
