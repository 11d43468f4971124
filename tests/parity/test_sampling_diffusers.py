"""Our solvers vs diffusers' schedulers over full runs with a deterministic fake velocity model.

The official FlowUniPC / FlowDPMSolver schedulers are adaptations of diffusers' UniPC / DPM-Solver
code, so diffusers configured for flow matching, fed the same σ grid, is an independent
reference for the step algebra. The grids themselves are built here from the spec formulas
(§4.4, §4.6), not taken from wanmoe.
"""

import numpy as np
import pytest
import torch
from tolerance import rel_err

diffusers = pytest.importorskip("diffusers")

from wanmoe.sampling import FlowDPMPP, FlowEuler, FlowUniPC  # noqa: E402

SHAPE = (1, 4, 3, 6, 8)  # [B, C, F, H, W], tiny


def fake_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Deterministic smooth stand-in for the DiT: v = f(x, t), float32."""
    tt = t.to(torch.float32) / 1000.0
    return torch.tanh(0.7 * x) * (0.5 + tt) + torch.sin(3.0 * tt + 0.1 * x) - 0.2 * x


def spec_grid(steps: int, shift: float, start: float) -> np.ndarray:
    """Shifted float64 σ grid of spec §4.3/4.4/4.6 (start = float32(0.999) or 1.0), N values."""
    s = np.linspace(start, 0.0, steps + 1)[:steps]
    return shift * s / (1 + (shift - 1) * s)


SIGMA_MAX_F32 = float(np.float32(0.999))  # spec §4.4: 0.9990000128746033


def run_ours(solver, x: torch.Tensor) -> torch.Tensor:
    for t in solver.timesteps:
        x = solver.step(fake_velocity(x, t), x)
    return x


def run_diffusers(sched, timesteps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    for t in timesteps:
        x = sched.step(fake_velocity(x, t), t, x, return_dict=False)[0]
    return x


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps,shift", [(40, 12.0), (50, 5.0), (7, 3.0)])
def test_unipc_matches_diffusers(steps, shift):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=1.0, solver_type="bh2", predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero")
    # Custom sigmas: diffusers applies flow_shift 1 (identity), t = int64(1000·σ) from float64,
    # and appends 0 in float32 -- the official construction of spec §4.4.
    sched.set_timesteps(sigmas=spec_grid(steps, shift, SIGMA_MAX_F32))
    ours = FlowUniPC(steps, shift)
    assert torch.equal(ours.timesteps, sched.timesteps)
    assert torch.equal(ours.sigmas, sched.sigmas)

    x = noise()
    ref = run_diffusers(sched, sched.timesteps, x)
    got = run_ours(ours, x)
    # Same float32 op sequence as diffusers' UniPC (0-dim float32 scalars, x0 from the
    # uncorrected sample, bh2, lower_order_final): expected bit-identical; 1e-6 relative would
    # only allow for a different BLAS path in the 2x2 corrector solve.
    assert rel_err(got, ref) <= 1e-6
    assert torch.equal(got, ref), f"max abs diff {(got - ref).abs().max().item():.3e}"


@pytest.mark.parametrize("steps,shift", [(40, 12.0), (50, 5.0), (7, 3.0)])
def test_dpmpp_matches_diffusers(steps, shift):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=1.0, algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    # diffusers' own flow grid starts at 0.999 (float64); the official DPM++ path starts at 1.0
    # (spec §4.6), which diffusers cannot produce, so its internal grid is replaced.
    sig64 = spec_grid(steps, shift, 1.0)
    sched.sigmas = torch.from_numpy(np.concatenate([sig64, [0.0]]).astype(np.float32))
    sched.timesteps = torch.from_numpy(sig64 * 1000).to(torch.int64)
    sched.set_begin_index(0)
    ours = FlowDPMPP(steps, shift)
    assert torch.equal(ours.timesteps, sched.timesteps)
    assert torch.equal(ours.sigmas, sched.sigmas)
    assert ours.timesteps[0].item() == 1000

    x = noise(1)
    ref = run_diffusers(sched, sched.timesteps, x)
    got = run_ours(ours, x)
    # Same op order as DPM-Solver++ 2M midpoint in diffusers: bit-identical expected.
    assert rel_err(got, ref) <= 1e-6
    assert torch.equal(got, ref), f"max abs diff {(got - ref).abs().max().item():.3e}"
    assert ours.orders == [1] + [2] * (steps - 2) + [1]


@pytest.mark.parametrize("steps,shift", [(4, 5.0), (40, 12.0)])
def test_euler_matches_diffusers(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sig32 = spec_grid(steps, shift, 1.0).astype(np.float32)
    sched.set_timesteps(sigmas=sig32)  # shift 1.0 in float32 is the identity
    ours = FlowEuler(steps, shift)
    assert torch.equal(ours.sigmas, sched.sigmas)
    # diffusers keeps float timesteps 1000·σ; ours are the official trunc(1000·σ) integers.
    assert torch.equal(ours.timesteps, (torch.from_numpy(spec_grid(steps, shift, 1.0)) * 1000)
                       .to(torch.int64))

    x = noise(2)
    ref = x
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(fake_velocity(ref, ours.timesteps[i]), t, ref, return_dict=False)[0]
    got = run_ours(ours, x)
    # x + (σ_{i+1} - σ_i)·v in float32 on both sides: bit-identical expected.
    assert rel_err(got, ref) <= 1e-6
    assert torch.equal(got, ref)
