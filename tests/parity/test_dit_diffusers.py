"""WanDiT vs diffusers WanTransformer3DModel: same tiny random weights through the key map, fp32.

Metric: max|ours - diffusers| / max|diffusers| over the whole output, tolerance 1e-5.
Remaining differences (spec diffusers-differences.md, "in float32 on CPU"):
* timestep sinusoid: ours float64 (official), diffusers float32. At t ~ 1000 the fp32 angle
  t*omega carries ~1e-4 rad absolute error, which reaches the output as ~5e-6 relative; at small
  t the two agree to ~3e-7.
* RoPE: ours complex float64 (official), diffusers real cos/sin in float32: ~1e-7 relative.
* summation order of the batched matmuls / SDPA: ~1e-7.
diffusers neither pads nor masks the sequence, so the inputs here need no padding (seq_len =
token count) and diffusers gets the context already zero-padded to text_len (as our forward
does inside); the padded text rows are attended by both, as upstream.
"""

import pytest
import torch
from helpers_dit import diffusers_kwargs, load_benchmark, randomize_
from tolerance import rel_err

from wanmoe.configs import DiTConfig
from wanmoe.loading.keymaps.dit import official_to_diffusers
from wanmoe.models.dit import WanDiT

diffusers = pytest.importorskip("diffusers")

RTOL = 1e-5


def pair(cfg: DiTConfig, seed: int = 0):
    ours = randomize_(WanDiT(cfg), seed).eval()
    ref = diffusers.WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()
    ref.load_state_dict({official_to_diffusers(k): v for k, v in ours.state_dict().items()}, strict=True)
    return ours, ref


def padded(ctx, text_len):
    return torch.stack([torch.cat([c, c.new_zeros(text_len - c.shape[0], c.shape[1])]) for c in ctx])


T2V = DiTConfig(dim=96, ffn_dim=160, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                text_dim=32, text_len=24)  # head dim 48 -> RoPE split 16/16/16
TI2V = DiTConfig(dim=72, ffn_dim=96, num_heads=3, num_layers=2, in_dim=48, out_dim=48,
                 text_dim=32, text_len=12)  # head dim 24 -> RoPE split 8/8/8


@pytest.fixture(scope="module")
def t2v():
    return pair(T2V)


@pytest.mark.parametrize("grid, t", [((1, 2, 2), 999), ((3, 8, 6), 0), ((3, 8, 6), 999),
                                     ((2, 10, 4), 500), ((5, 4, 14), 3)])
@torch.no_grad()
def test_parity_grids_and_timesteps(t2v, grid, t):
    ours, ref = t2v
    g = torch.Generator().manual_seed(sum(grid) + t)
    x = torch.randn(1, 16, *grid, generator=g)
    ctx = [torch.randn(9, 32, generator=g)]  # shorter than text_len: zero-padded by both
    tt = torch.tensor([t])
    a = ours(x, tt, ctx)
    b = ref(x, tt, padded(ctx, T2V.text_len)).sample
    assert a.shape == b.shape == x.shape
    print(f"grid {grid} t {t}: rel diff {rel_err(a, b):.2e}")
    assert rel_err(a, b) < RTOL


class _Float64Sinusoid(torch.nn.Module):
    """[cos | sin] with omega_j = 10000^(-j/half), in float64 (spec §2.2), cast to float32."""

    def __init__(self, dim):
        super().__init__()
        self.half = dim // 2

    def forward(self, t):
        omega = 10000.0 ** (-torch.arange(self.half, dtype=torch.float64) / self.half)
        ang = t.to(torch.float64)[:, None] * omega[None]
        return torch.cat([ang.cos(), ang.sin()], dim=1).float()


@torch.no_grad()
def test_sinusoid_precision_explains_high_t_difference():
    """With diffusers' fp32 sinusoid swapped for a float64 one, t=999 agrees to the RoPE level."""
    ours, ref = pair(T2V, seed=1)
    ref.condition_embedder.timesteps_proj = _Float64Sinusoid(T2V.freq_dim)
    x, ctx, t = torch.randn(1, 16, 3, 8, 6), [torch.randn(9, 32)], torch.tensor([999])
    diff = rel_err(ours(x, t, ctx), ref(x, t, padded(ctx, T2V.text_len)).sample)
    print(f"t 999 with float64 sinusoid in diffusers: rel diff {diff:.2e}")
    assert diff < 1e-6  # what is left: RoPE fp32 vs fp64 and summation order (~3e-7)


@torch.no_grad()
def test_parity_batch_with_per_sample_timesteps(t2v):
    """B=2 with different t per sample: our [B] broadcast is per sample, like diffusers."""
    ours, ref = t2v
    x = torch.randn(2, 16, 2, 6, 4)
    ctx = [torch.randn(24, 32), torch.randn(1, 32)]
    t = torch.tensor([875, 37])
    assert rel_err(ours(x, t, ctx), ref(x, t, padded(ctx, T2V.text_len)).sample) < RTOL


@torch.no_grad()
def test_parity_ti2v_per_token_timesteps():
    """TI2V layout: in_dim 48 and float [B, L] per-token timesteps (non-constant rows)."""
    ours, ref = pair(TI2V, seed=5)
    x = torch.randn(1, 48, 3, 4, 4)
    n = 3 * 2 * 2
    t = torch.full((1, n), 731.0)
    t[0, :4] = 0.0  # first latent frame at t = 0, as the TI2V first-frame mask produces
    ctx = [torch.randn(7, 32)]
    assert rel_err(ours(x, t, ctx), ref(x, t, padded(ctx, TI2V.text_len)).sample) < RTOL


def test_benchmark_gpu_path_smoke(capsys):
    """benchmarks/bench_dit.py's GPU code path (meta build, on-device random bf16 weights,
    shared-weight diffusers twin, FLOP count) run on CPU with a tiny config."""
    import argparse

    bench = load_benchmark("bench_dit")
    bench.run_gpu(argparse.Namespace(smoke=True, runs=1, no_baseline=False, layers=2))
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| smoke")]
    assert len(row) == 1
    drift = float(row[0].strip("|").split("|")[-1])
    assert drift < 0.05  # bf16 wanmoe vs bf16 diffusers on the same weights: bf16-level drift only
