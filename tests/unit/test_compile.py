"""`--compile`: torch.compile per DiT block (wanmoe.runtime.compile).

The equality tests compile with backend="aot_eager" (dynamo capture + AOT autograd tracing,
eager kernels): it exercises everything of ours that compiling touches (the block capture, the
real-valued RoPE path, the key-length graph break, the shared graph across blocks) in ~5 s.
Inductor (C++ codegen) takes ~2 minutes per graph on the 2-core CI box, so its test is marked
slow and needs a C compiler.
"""

import os
import shutil
import warnings

import pytest
import torch
from helpers_dit import TINY, randomize_
from tolerance import rel_err

from wanmoe.errors import InputError
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.compile import (CompileFallbackWarning, CompiledBlockForward, compile_blocks,
                                    compile_failed, is_compiled, uncompile_blocks)

# Measured: aot_eager is bit-identical to eager here (same kernels; the real RoPE form gives the
# complex form's bits); inductor fuses and reorders fp32 math: measured 5e-7 max abs on outputs
# of scale ~3 (2e-7 relative). 1e-5 relative leaves a wide margin for other CPUs.
RTOL = 1e-5


# set by inductor at its first code generation (not by the test): put back as it was
_INDUCTOR_ENV = ("_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    before = {k: os.environ.get(k) for k in _INDUCTOR_ENV}
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _model(seed=0):
    return randomize_(WanDiT(TINY), seed).eval()


def _inputs(grid=(3, 8, 6), b=1):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, 16, *grid, generator=g)
    ctx = [torch.randn(9 + i, 32, generator=g) for i in range(b)]
    return x, torch.full((b,), 500), ctx


@torch.no_grad()
@pytest.mark.parametrize("seq_len", [None, 80])  # 80 > 72 tokens: padded keys masked via k_lens
def test_compiled_blocks_match_eager(seq_len):
    model = _model()
    x, t, ctx = _inputs()
    ref = model(x, t, ctx, seq_len=seq_len)
    assert compile_blocks(model, backend="aot_eager") == TINY.num_layers
    assert all(isinstance(b.forward, CompiledBlockForward) for b in model.blocks)
    out = model(x, t, ctx, seq_len=seq_len)
    assert compile_failed(model) is None
    assert rel_err(out, ref) < RTOL
    x2, t2, ctx2 = _inputs((2, 4, 4), b=2)  # another grid and batch: a second graph, still right
    assert rel_err(model(x2, t2, ctx2), _model()(x2, t2, ctx2)) < RTOL


@torch.no_grad()
def test_compiled_region_sees_the_real_rope_table():
    """Inside the compiled block RoPE gets the float64 (cos, sin) view, never complex."""
    model = _model()
    seen = []

    def spy_backend(gm, example_inputs):
        seen.extend(t.dtype for t in example_inputs if isinstance(t, torch.Tensor))
        return gm.forward

    compile_blocks(model, backend=spy_backend)
    x, t, ctx = _inputs()
    model(x, t, ctx)
    assert compile_failed(model) is None
    assert torch.float64 in seen and not any(d.is_complex for d in seen)


@torch.no_grad()
def test_compile_failure_falls_back_to_eager_with_one_warning():
    model = _model()
    x, t, ctx = _inputs()
    ref = model(x, t, ctx)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler here\nsecond line of the error")

    compile_blocks(model, backend=broken_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = model(x, t, ctx)
        out2 = model(x, t, ctx)
    ours = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert len(ours) == 1  # once per model, not per block or per forward
    msg = str(ours[0].message)
    assert "no C compiler here" in msg and "second line" not in msg and "\n" not in msg
    assert "no C compiler here" in compile_failed(model)
    assert torch.equal(out1, ref) and torch.equal(out2, ref)  # the eager blocks, bit for bit


@torch.no_grad()
def test_uncompile_restores_the_eager_blocks():
    model = _model()
    compile_blocks(model, backend="aot_eager")
    assert is_compiled(model) and compile_blocks(model, backend="aot_eager") == 0  # idempotent
    uncompile_blocks(model)
    assert not is_compiled(model)
    assert all("forward" not in b.__dict__ for b in model.blocks)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="not one of"):
        compile_blocks(_model(), backend="tensorrt-please")


def test_runtime_config_and_cli_flag(monkeypatch):
    from wanmoe.cli import build_parser
    from wanmoe.configs import T2V_A14B
    from wanmoe.pipeline import WanPipeline
    from wanmoe.request import runtime_config

    rt = runtime_config("cpu", compile=True)
    assert rt.compile is True and runtime_config("cpu").compile is False
    with pytest.raises(InputError, match="compile"):
        runtime_config("cpu", compile="yes")
    experts = {"high_noise": _model(1), "low_noise": _model(2)}
    WanPipeline(T2V_A14B, experts, None, None, runtime=rt)
    assert all(is_compiled(m) for m in experts.values())
    plain = {"high_noise": _model(1)}
    WanPipeline(T2V_A14B, plain, None, None, runtime=runtime_config("cpu"))
    assert not is_compiled(plain["high_noise"])
    parser = build_parser("generate")
    assert parser.parse_args(["generate", "--prompt", "p", "--compile"]).compile is True
    assert parser.parse_args(["generate", "--prompt", "p"]).compile is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor's CPU backend needs a C compiler (gcc/cc); none on PATH")
@torch.no_grad()
def test_inductor_matches_eager():
    model = _model()
    x, t, ctx = _inputs()
    ref = model(x, t, ctx)
    compile_blocks(model, backend="inductor")
    out = model(x, t, ctx)
    assert compile_failed(model) is None
    assert rel_err(out, ref) < RTOL
