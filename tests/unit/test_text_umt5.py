"""UMT5Encoder: official layout at full size (meta), spec rules of §5.2 on tiny models."""

import json
import math

import numpy as np
import pytest
import torch
from tolerance import assert_close_rel, rel_err

from wanmoe.configs import UMT5_XXL, T5Config
from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import t5_config_from_shapes
from wanmoe.text.umt5 import T5RMSNorm, TanhGELU, UMT5Encoder, relative_position_bucket

TINY = T5Config(vocab_size=64, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, text_len=16)


def _manifest(manifests_dir, name):
    return json.loads((manifests_dir / name).read_text())


def test_meta_build_has_exactly_the_official_tensors(manifests_dir):
    man = _manifest(manifests_dir, "official-umt5-xxl-encoder.json")
    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {t["name"]: tuple(t["shape"]) for t in man["tensors"]}
    assert sum(p.numel() for p in model.parameters()) == man["summary"]["num_params"]
    assert list(model.buffers()) == []  # nothing that needs real values at init


@pytest.mark.parametrize("name", ["official-umt5-xxl-encoder.json", "transformers-umt5-xxl-encoder.json"])
def test_config_from_full_size_shapes(manifests_dir, name):
    shapes = {t["name"]: tuple(t["shape"]) for t in _manifest(manifests_dir, name)["tensors"]}
    assert t5_config_from_shapes(shapes) == UMT5_XXL


def test_config_from_shapes_rejects_other_state_dicts():
    with pytest.raises(CheckpointError, match="token_embedding.weight"):
        t5_config_from_shapes({"patch_embedding.weight": (5120, 16, 1, 2, 2)})


def _spec_bucket(rel: int) -> int:
    """Spec §5.2 bucket rule written out per element, ln in float32 (numpy)."""
    bucket = 16 if rel > 0 else 0
    n = abs(rel)
    if n < 8:
        return bucket + n
    ratio = np.float32(np.log(np.float32(n) / np.float32(8))) / np.float32(math.log(128 / 8))
    return bucket + min(15, 8 + int(np.float32(ratio * np.float32(8))))


def test_bucket_table_follows_spec_rule():
    table = relative_position_bucket(40, 700)  # rel from -39 to 699
    for q in (0, 39):
        row = [_spec_bucket(k - q) for k in range(700)]
        assert table[q].tolist() == row


def test_rmsnorm_fp32_mean_then_cast_to_half_weight():
    norm = T5RMSNorm(32).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32).to(torch.bfloat16)
    y = norm(x)
    x32 = x.float()
    ref = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)


def test_gelu_formula_is_tanh_gelu():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    assert_close_rel(TanhGELU()(x), ref, rtol=1e-14)  # same function in float64: measured 1.5e-16
    assert TanhGELU()(x.to(torch.bfloat16)).dtype == torch.bfloat16


def _tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = UMT5Encoder(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.ndim == 2 and p.shape[0] == TINY.vocab_size else 0.1)
        for blk in model.blocks:
            blk.pos_embedding.embedding.weight.normal_(0, 1)
    return model.to(dtype)


def test_padded_keys_do_not_change_real_tokens():
    model = _tiny_model()
    ids = torch.randint(3, 64, (1, 16))
    mask = torch.zeros(1, 16, dtype=torch.int64)
    mask[0, :6] = 1
    other = ids.clone()
    other[0, 6:] = torch.randint(3, 64, (10,))
    with torch.no_grad():
        a, b = model(ids, mask), model(other, mask)
        full = model(ids, torch.ones_like(mask))
    assert torch.equal(a[0, :6], b[0, :6])
    assert not torch.allclose(a[0, :6], full[0, :6])  # the mask really acts


def test_position_tables_are_per_layer():
    """Swapping one layer's position table changes the output: tables are per layer, not shared."""
    model = _tiny_model()
    ids = torch.randint(3, 64, (1, 16))
    with torch.no_grad():
        a = model(ids)
        model.blocks[1].pos_embedding.embedding.weight.mul_(2)
        b = model(ids)
    assert not torch.allclose(a, b)


def test_bf16_runs_without_autocast_in_param_dtype():
    model = _tiny_model(dtype=torch.bfloat16)
    ids = torch.randint(3, 64, (2, 16))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 16, 32) and torch.isfinite(out).all()


def test_caller_autocast_is_ignored():
    """fp32 parameters stay fp32 inside a bf16 autocast region (the official T5 runs outside it)."""
    model = _tiny_model()
    ids = torch.randint(3, 64, (1, 16))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_matmul_upcast_matches_bf16_kernels_up_to_summation_order():
    """The fast CPU path (fp32 GEMM of bf16 values) vs the reference bf16 kernels."""
    model = _tiny_model()
    ids = torch.randint(3, 64, (1, 16))
    mask = torch.ones_like(ids)
    mask[0, 11:] = 0
    with torch.no_grad():
        ref32 = model(ids, mask)
        model.to(torch.bfloat16)
        plain = model(ids, mask)
        model.set_matmul_upcast(True)
        fast = model(ids, mask)
        model.set_matmul_upcast(False)
        again = model(ids, mask)
    assert fast.dtype == torch.bfloat16 and torch.equal(again, plain)  # the switch turns it off
    # bf16 products are exact in fp32, so only the accumulation order differs: a few bf16 ulps
    # (2^-8 relative each) at most, and no less accurate than the bf16 kernels against fp32
    assert rel_err(fast, plain) < 4 * 2.0**-8
    assert rel_err(fast, ref32) <= 1.25 * rel_err(plain, ref32) + 1e-3
