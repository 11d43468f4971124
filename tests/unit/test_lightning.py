"""The Wan2.2-Lightning sampler: its float32 grid, float model timesteps, the 2+2 expert split,
one model call per step at guidance 1.0, and the Euler update."""

import math

import numpy as np
import pytest
import torch

from wanmoe.models.experts import ExpertSchedule
from wanmoe.models.layers import sinusoidal_embedding
from wanmoe.sampling import LIGHTNING, PRESETS, SOLVERS, FlowEulerLightning, make_solver
from wanmoe.sampling.guidance import CFGDenoiser
from wanmoe.sampling.lightning import lightning_schedule
from wanmoe.sampling.loop import denoise


def reference_grid(steps, shift):
    """The Lightning EulerScheduler grid recomputed with numpy float32 scalars (IEEE ops)."""
    t = np.linspace(1000, 0, steps + 1, dtype=np.float32)
    s = t / np.float32(1000)
    f32 = np.float32
    s = (f32(shift) * s) / (f32(1) + f32(shift - 1) * s)
    return (s * f32(1000))[:-1], s


def test_four_steps_shift_five_numbers():
    solver = make_solver(LIGHTNING["solver"], LIGHTNING["steps"], LIGHTNING["shift"])
    assert solver.timesteps.dtype == torch.float32 and solver.sigmas.dtype == torch.float32
    assert solver.timesteps.tolist() == [1000.0, 937.5, float(np.float32(2500 / 3)), 625.0]
    assert solver.timesteps[2].item() == float(np.float32(833.3333))  # float, not truncated to 833
    assert solver.sigmas.tolist() == [1.0, 0.9375, float(np.float32(2.5 / 3)), 0.625, 0.0]


@pytest.mark.parametrize("steps, shift", [(4, 5.0), (8, 5.0), (6, 3.3), (4, 12.0), (1, 1.0)])
def test_grid_bit_identical_to_float32_reference(steps, shift):
    timesteps, sigmas = lightning_schedule(steps, shift)
    ref_t, ref_s = reference_grid(steps, shift)
    assert np.array_equal(timesteps.numpy(), ref_t) and np.array_equal(sigmas.numpy(), ref_s)
    assert sigmas[-1].item() == 0.0 and timesteps[0].item() == 1000.0


def test_euler_keeps_its_integer_grid():
    assert make_solver("euler", 4, 5.0).timesteps.tolist() == [1000, 937, 833, 625]
    assert SOLVERS["euler-lightning"] is FlowEulerLightning and PRESETS["lightning"] is LIGHTNING
    assert LIGHTNING == dict(solver="euler-lightning", steps=4, shift=5.0, guide_scale=1.0)


def test_expert_split_two_high_two_low():
    schedule = ExpertSchedule.two_expert(0.875, 1.0, 1.0)
    solver = make_solver("euler-lightning", 4, 5.0)
    picks = [schedule.select(t).expert for t in solver.timesteps]
    assert picks == ["high_noise", "high_noise", "low_noise", "low_noise"]
    assert schedule.split_counts(solver.timesteps) == {"high_noise": 2, "low_noise": 2}


def test_float_timestep_sinusoid_is_the_float64_of_the_float32():
    t = make_solver("euler-lightning", 4, 5.0).timesteps  # float32 [4]
    a = sinusoidal_embedding(256, t)
    b = sinusoidal_embedding(256, t.to(torch.float64))
    assert a.dtype == torch.float64 and torch.equal(a, b)
    assert not torch.equal(a[2], sinusoidal_embedding(256, torch.tensor([833]))[0])


def test_four_steps_four_calls_and_the_euler_update():
    """Guidance 1.0 with a negative prompt given: one forward per step, 4 in all; the result is
    x + Σ (σ_{i+1} - σ_i)·v_i with the float32 σ, and each expert sees its float timesteps."""
    seen = []

    def expert(name, gain):
        def model(x, t, context, seq_len=None):
            seen.append((name, t.dtype, t.tolist()))
            return gain * x + 0.25  # [B, C, F, H, W]
        return model

    experts = {"high_noise": expert("high_noise", -0.5), "low_noise": expert("low_noise", 0.75)}
    cfg = CFGDenoiser(experts, cond=[torch.zeros(3, 8)], uncond=[torch.ones(3, 8)])
    schedule = ExpertSchedule.two_expert(0.875, LIGHTNING["guide_scale"], LIGHTNING["guide_scale"])
    solver = make_solver("euler-lightning", 4, 5.0)
    x0 = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = denoise(x0.clone(), solver, schedule, cfg)
    assert cfg.calls == 4
    assert [s[0] for s in seen] == ["high_noise"] * 2 + ["low_noise"] * 2
    assert all(dtype == torch.float32 for _, dtype, _ in seen)
    assert [s[2][0] for s in seen] == make_solver("euler-lightning", 4, 5.0).timesteps.tolist()
    x, sig = x0.clone(), solver.sigmas
    for i, gain in enumerate([-0.5, -0.5, 0.75, 0.75]):
        v = gain * x + 0.25
        x = x + (sig[i + 1] - sig[i]) * v
    assert torch.equal(out, x)


def test_dit_takes_float_timesteps():
    """A tiny DiT forward at t = 833.3333 (float32) differs from the integer 833 one."""
    from wanmoe.configs import DiTConfig
    from wanmoe.models.dit import WanDiT

    cfg = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=4, out_dim=4,
                    text_dim=8, text_len=4, freq_dim=16)
    torch.manual_seed(0)
    model = WanDiT(cfg).eval()
    torch.nn.init.normal_(model.head.head.weight)
    x, ctx = torch.randn(1, 4, 1, 2, 2), [torch.randn(2, 8)]
    t = make_solver("euler-lightning", 4, 5.0).timesteps[2:3]
    with torch.no_grad():
        a, b = model(x, t, ctx), model(x, torch.tensor([833]), ctx)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    assert not math.isclose(t.item(), 833.0)
