"""WanDiT structure and forward-contract tests (fp32, tiny random weights)."""

import json

import pytest
import torch
from helpers_dit import TINY, load_benchmark, randomize_
from tolerance import assert_close_rel, rel_err

from wanmoe import configs
from wanmoe.configs import DiTConfig
from wanmoe.errors import InputError
from wanmoe.models.dit import WanDiT
from wanmoe.models.rope import rope_apply, rope_table
from wanmoe.runtime.attention import using_attention

# fp32 forwards of the same math in a different batch layout / padding: a few ulps of the
# output scale (~4) from different GEMM blocking; 1e-5 relative leaves a wide margin.
RTOL_FP32 = 1e-5


@pytest.fixture(scope="module")
def tiny():
    return randomize_(WanDiT(TINY)).eval()


@pytest.mark.parametrize("cfg_name, manifest", [("A14B_DIT", "official-wan22-t2v-a14b-dit.json"),
                                                ("TI2V_5B_DIT", "official-wan22-ti2v-5b-dit.json")])
def test_meta_build_matches_manifest(manifests_dir, cfg_name, manifest):
    data = json.loads((manifests_dir / manifest).read_text())
    with torch.device("meta"):
        model = WanDiT(getattr(configs, cfg_name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {t["name"]: t["shape"] for t in data["tensors"]}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == data["summary"]["num_params"]
    assert len(ours) == data["summary"]["num_tensors"]


@torch.no_grad()
def test_batch_of_two_equals_two_singles(tiny):
    x = torch.randn(2, 16, 2, 6, 8)
    t = torch.tensor([937, 412])
    ctx = [torch.randn(7, 32), torch.randn(13, 32)]  # cond / uncond of different lengths
    both = tiny(x, t, ctx)
    for i in range(2):
        one = tiny(x[i:i + 1], t[i:i + 1], ctx[i:i + 1])
        assert rel_err(both[i:i + 1], one) < RTOL_FP32


@pytest.mark.parametrize("backend", ["reference", "sdpa"])  # explicit mask / key slicing
@torch.no_grad()
def test_sequence_padding_is_masked(tiny, backend):
    x = torch.randn(2, 16, 3, 4, 6)  # 3*2*3 = 18 tokens
    t, ctx = torch.tensor([700, 3]), [torch.randn(9, 32), torch.randn(2, 32)]
    with using_attention(tiny, backend):
        plain = tiny(x, t, ctx)
        padded = tiny(x, t, ctx, seq_len=31)
    assert padded.shape == plain.shape
    assert rel_err(padded, plain) < RTOL_FP32


@torch.no_grad()
def test_padding_changes_nothing_with_mixed_timesteps(tiny):
    """Padded [B, L] timesteps (values on padding rows arbitrary) are ignored by the output."""
    x = torch.randn(1, 16, 2, 4, 4)  # 8 tokens
    t = torch.randint(0, 1000, (1, 8))
    ctx = [torch.randn(4, 32)]
    t_pad = torch.cat([t, torch.full((1, 5), 17)], dim=1)
    assert rel_err(tiny(x, t_pad, ctx, seq_len=13), tiny(x, t, ctx)) < RTOL_FP32


@torch.no_grad()
def test_per_token_timesteps_equal_broadcast(tiny):
    x = torch.randn(2, 16, 2, 4, 6)  # 12 tokens
    ctx = [torch.randn(5, 32), torch.randn(3, 32)]
    t = torch.tensor([999, 250])
    out_b = tiny(x, t, ctx)
    out_bl = tiny(x, t[:, None].expand(2, 12).contiguous(), ctx)
    assert torch.equal(out_b, out_bl)
    out_f = tiny(x, t.float()[:, None].expand(2, 12).contiguous(), ctx)  # TI2V passes float32 [B, L]
    assert torch.equal(out_b, out_f)


@torch.no_grad()
def test_per_token_time_mode_matches_compact(tiny):
    """set_per_token_time(True) (upstream's per-token time MLP) == the compact default in fp32."""
    x, t, ctx = torch.randn(2, 16, 2, 4, 4), torch.tensor([999, 3]), [torch.randn(5, 32), torch.randn(2, 32)]
    compact = tiny(x, t, ctx, seq_len=11)
    try:
        exact = tiny.set_per_token_time(True)(x, t, ctx, seq_len=11)
    finally:
        tiny.set_per_token_time(False)
    assert rel_err(exact, compact) < RTOL_FP32


@torch.no_grad()
def test_per_token_time_embedding_rows(tiny):
    """A non-constant [B, L] row embeds each token with its own timestep."""
    t = torch.tensor([[0, 0, 500, 999, 999, 1]])
    e, e0 = tiny.time_embed(t, 1, 6)
    assert e.shape == (1, 6, 96) and e0.shape == (1, 6, 6, 96)
    for j in range(6):
        ej, e0j = tiny.time_embed(t[:, j], 1, 6)
        assert rel_err(e[0, j], ej[0, 0]) < RTOL_FP32 and rel_err(e0[0, j], e0j[0, 0]) < RTOL_FP32


@torch.no_grad()
def test_ti2v_shaped_tiny_config():
    cfg = DiTConfig(dim=72, ffn_dim=96, num_heads=3, num_layers=1, in_dim=48, out_dim=48,
                    text_dim=32, text_len=8)  # head dim 24 -> RoPE split 8/8/8
    model = randomize_(WanDiT(cfg), seed=3)
    x = torch.randn(1, 48, 2, 4, 4)
    out = model(x, torch.full((1, 8), 640.0), [torch.randn(8, 32)])
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_rope_padding_rows_pass_through():
    table = rope_table((2, 2, 3), (16, 16, 16), seq_len=15)
    x = torch.randn(1, 15, 2, 48)
    y = rope_apply(x, table)
    assert torch.equal(y[:, 12:], x[:, 12:])
    assert not torch.allclose(y[:, 1:12], x[:, 1:12])
    assert torch.equal(y[:, 0], x[:, 0])  # position (0,0,0) is the identity rotation (cos 1, sin 0)


def test_rope_norm_preserving_and_split():
    # Rotation keeps every complex pair's modulus; the head-128 split is the spec's 44/42/42.
    assert configs.A14B_DIT.rope_split == (44, 42, 42)
    table = rope_table((3, 4, 5), configs.A14B_DIT.rope_split, seq_len=60)
    x = torch.randn(1, 60, 1, 128, dtype=torch.float64)
    y = rope_apply(x, table).double()
    pair = lambda z: z.reshape(60, 64, 2).norm(dim=-1)  # noqa: E731
    assert_close_rel(pair(y), pair(x), rtol=3e-7)  # fp32 rotation: measured <= 4.7e-8 (seeds 0..49)


@torch.no_grad()
def test_benchmark_flop_formula_matches_flop_counter(tiny):
    """benchmarks/bench_dit.py's analytic FLOPs == torch's FlopCounterMode (reference attention,
    whose matmuls the counter sees; CPU SDPA kernels are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    bench = load_benchmark("bench_dit")
    x = torch.randn(1, 16, 4, 8, 8)  # 64 tokens
    with FlopCounterMode(display=False) as counter, using_attention(tiny, "reference"):
        tiny(x, torch.tensor([5]), [torch.randn(3, 32)])
    assert counter.get_total_flops() == bench.dit_flops(TINY, 64)


def test_input_errors(tiny):
    x = torch.randn(1, 16, 1, 4, 4)
    with pytest.raises(InputError, match="seq_len"):
        tiny(x, torch.tensor([1]), [torch.randn(3, 32)], seq_len=2)
    with pytest.raises(InputError, match="context"):
        tiny(x, torch.tensor([1]), [torch.randn(17, 32)])
    with pytest.raises(InputError, match="latent"):
        tiny(torch.randn(1, 15, 1, 4, 4), torch.tensor([1]), [torch.randn(3, 32)])
    with pytest.raises(InputError, match="timestep"):
        tiny(x, torch.tensor([1, 2]), [torch.randn(3, 32)])
    with pytest.raises(InputError, match="compute dtype"):
        tiny.set_compute_dtype(torch.float16)
