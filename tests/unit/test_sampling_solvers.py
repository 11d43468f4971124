"""Solver grids, orders and step algebra against the values of spec §4.4-4.7."""

import math

import pytest
import torch
from tolerance import assert_close_rel

from wanmoe.configs import T2V_A14B
from wanmoe.errors import InputError
from wanmoe.models.experts import ExpertSchedule
from wanmoe.sampling import FlowDPMPP, FlowEuler, FlowUniPC, make_solver
from wanmoe.sampling.sigmas import unipc_sigma_max

# Spec §4.7, default A14B run (40 steps, shift 12), copied verbatim:
# (i, UniPC t, UniPC σ_i, expert, CFG, UniP order, DPM++ t, DPM++ σ_i)
SPEC_4_7 = [
    (0, 999, 0.999916613, "high", 4.0, 1, 1000, 1),
    (1, 997, 0.997782648, "high", 4.0, 2, 997, 0.997867823),
    (2, 995, 0.995546162, "high", 4.0, 2, 995, 0.995633185),
    (3, 993, 0.993199646, "high", 4.0, 2, 993, 0.993288577),
    (4, 990, 0.990734696, "high", 4.0, 2, 990, 0.990825713),
    (5, 988, 0.988142192, "high", 4.0, 2, 988, 0.988235295),
    (6, 985, 0.985411942, "high", 4.0, 2, 985, 0.98550725),
    (7, 982, 0.98253268, "high", 4.0, 2, 982, 0.982630253),
    (8, 979, 0.97949177, "high", 4.0, 2, 979, 0.979591846),
    (9, 976, 0.976275384, "high", 4.0, 2, 976, 0.976377964),
    (10, 972, 0.972867668, "high", 4.0, 2, 972, 0.972972989),
    (11, 969, 0.969251215, "high", 4.0, 2, 969, 0.969359338),
    (12, 965, 0.965406179, "high", 4.0, 2, 965, 0.965517223),
    (13, 961, 0.961310089, "high", 4.0, 2, 961, 0.961424351),
    (14, 956, 0.956937671, "high", 4.0, 2, 957, 0.957055211),
    (15, 952, 0.952259898, "high", 4.0, 2, 952, 0.952380955),
    (16, 947, 0.947243631, "high", 4.0, 2, 947, 0.947368443),
    (17, 941, 0.941850841, "high", 4.0, 2, 941, 0.941979527),
    (18, 936, 0.936037302, "high", 4.0, 2, 936, 0.93617022),
    (19, 929, 0.929751933, "high", 4.0, 2, 929, 0.929889321),
    (20, 922, 0.922934771, "high", 4.0, 2, 923, 0.923076928),
    (21, 915, 0.915515423, "high", 4.0, 2, 915, 0.915662646),
    (22, 907, 0.907410383, "high", 4.0, 2, 907, 0.907563031),
    (23, 898, 0.898519933, "high", 4.0, 2, 898, 0.898678422),
    (24, 888, 0.888724148, "high", 4.0, 2, 888, 0.888888896),
    (25, 877, 0.877877295, "high", 4.0, 2, 878, 0.878048778),
    (26, 865, 0.865800679, "low", 3.0, 2, 865, 0.865979373),
    (27, 852, 0.85227257, "low", 3.0, 2, 852, 0.852459013),
    (28, 837, 0.837014437, "low", 3.0, 2, 837, 0.837209284),
    (29, 819, 0.819671929, "low", 3.0, 2, 819, 0.819875777),
    (30, 799, 0.799786508, "low", 3.0, 2, 800, 0.800000012),
    (31, 776, 0.776754677, "low", 3.0, 2, 776, 0.776978433),
    (32, 749, 0.749765456, "low", 3.0, 2, 750, 0.75),
    (33, 717, 0.717703104, "low", 3.0, 2, 717, 0.717948735),
    (34, 678, 0.678988814, "low", 3.0, 2, 679, 0.679245293),
    (35, 631, 0.631312847, "low", 3.0, 2, 631, 0.631578922),
    (36, 571, 0.571156323, "low", 3.0, 2, 571, 0.571428597),
    (37, 492, 0.492880344, "low", 3.0, 2, 493, 0.493150681),
    (38, 386, 0.38684696, "low", 3.0, 2, 387, 0.387096763),
    (39, 235, 0.235109538, "low", 3.0, 1, 235, 0.235294119),
]
SIGMA_ABS_TOL = 1e-7  # the spec prints σ with 9 significant digits


def test_unipc_a14b_table():
    s = FlowUniPC(40, 12.0)
    assert s.timesteps.dtype == torch.int64 and s.timesteps.shape == (40,)
    assert s.sigmas.dtype == torch.float32 and s.sigmas.shape == (41,)
    assert s.timesteps.tolist() == [row[1] for row in SPEC_4_7]
    for row in SPEC_4_7:
        assert s.sigmas[row[0]].item() == pytest.approx(row[2], abs=SIGMA_ABS_TOL), row
    assert s.sigmas[40].item() == 0.0


def test_dpmpp_a14b_table():
    s = FlowDPMPP(40, 12.0)
    assert s.timesteps.tolist() == [row[6] for row in SPEC_4_7]
    for row in SPEC_4_7:
        assert s.sigmas[row[0]].item() == pytest.approx(row[7], abs=SIGMA_ABS_TOL), row
    assert s.sigmas[0].item() == 1.0 and s.sigmas[40].item() == 0.0


def test_unipc_sigma_max_is_float32_0999():
    assert unipc_sigma_max() == 0.9990000128746033  # spec §4.4 step 1


def test_ti2v_defaults():
    s = FlowUniPC(50, 5.0)  # spec §4.4: t = 999, 995, 991, ..., 241, 172, 92
    assert s.timesteps[:3].tolist() == [999, 995, 991]
    assert s.timesteps[-3:].tolist() == [241, 172, 92]
    assert s.sigmas[0].item() == pytest.approx(0.999799848, abs=SIGMA_ABS_TOL)


@pytest.mark.parametrize("solver_cls", [FlowUniPC, FlowDPMPP])
def test_a14b_expert_split(solver_cls):
    # spec §3: 26 high + 14 low steps, last high t=877 (878 for DPM++), first low t=865.
    s = solver_cls(40, 12.0)
    sched = ExpertSchedule.from_preset(T2V_A14B)
    assert sched.split_counts(s.timesteps) == {"high_noise": 26, "low_noise": 14}
    stages = [sched.select(t) for t in s.timesteps]
    assert [st.expert == "high_noise" for st in stages] == [r[3] == "high" for r in SPEC_4_7]
    assert [st.guidance for st in stages] == [r[4] for r in SPEC_4_7]
    assert s.timesteps[26].item() == 865
    if solver_cls is FlowUniPC:
        assert s.timesteps[25].item() == 877


def _run(solver, x, vel):
    for t in solver.timesteps:
        x = solver.step(vel(x, t), x)
    return x


def _vel(x, t):
    return torch.cos(x) * (t.float() / 1000) - 0.3 * x


def test_unipc_orders_match_spec():
    s = FlowUniPC(40, 12.0)
    _run(s, torch.randn(2, 3, 4), _vel)
    assert s.orders == [row[5] for row in SPEC_4_7]  # 1, 2, ..., 2, 1


def test_first_unipc_step_by_hand():
    # Step 0: no corrector, order 1: x1 = (σ1/σ0)·x0 - α1·expm1(-h)·m0, m0 = x0 - σ0·v0.
    s = FlowUniPC(40, 12.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float32, generator=g)
    v = torch.randn(3, 5, dtype=torch.float32, generator=g)
    got = s.step(v, x)
    sig0, sig1 = s.sigmas[0].double(), s.sigmas[1].double()
    lam = lambda sg: torch.log(1 - sg) - torch.log(sg)  # noqa: E731
    h = lam(sig1) - lam(sig0)
    m0 = x.double() - sig0 * v.double()
    ref = (sig1 / sig0) * x.double() - (1 - sig1) * torch.expm1(-h) * m0
    # float64 reference of the float32 step: measured max|diff| / max|ref| <= 9.5e-8 (generator
    # seeds 0..299, under one fp32 ulp); allow 4 ulps (2^-23 = 1.2e-7)
    assert_close_rel(got, ref, rtol=5e-7)


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_last_step_returns_x0_exactly(name):
    # σ_N = 0: the final update is exactly m = x - σ_{N-1}·v computed from the uncorrected x.
    s = make_solver(name, 5, 3.0)
    x = torch.randn(2, 3, 4)
    for t in s.timesteps[:-1]:
        x = s.step(_vel(x, t), x)
    v = _vel(x, s.timesteps[-1])
    expected = x - s.sigmas[-2] * v
    assert torch.equal(s.step(v, x), expected)


def test_dpmpp_first_step_is_first_order():
    # σ_0 = 1 (λ = -inf): x1 = σ1·x0 + α1·m0 with m0 = x0 - v0.
    s = FlowDPMPP(10, 5.0)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    got = s.step(v, x)
    sig1 = s.sigmas[1].double()
    ref = sig1 * x.double() + (1 - sig1) * (x.double() - v.double())
    assert_close_rel(got, ref, rtol=5e-7)  # measured <= 9.1e-8 (seeds 0..299), as above


def test_euler_step_by_hand():
    s = FlowEuler(4, 5.0)
    assert s.timesteps.tolist() == [1000, 937, 833, 625]  # trunc(1000·σ), σ = 5s/(1+4s)
    x, v = torch.randn(6), torch.randn(6)
    assert torch.equal(s.step(v, x), x + (s.sigmas[1] - s.sigmas[0]) * v)


def test_solver_exhausted_and_shape_errors():
    s = FlowUniPC(2, 1.0)
    x = torch.zeros(3)
    with pytest.raises(InputError, match="shape"):
        s.step(torch.zeros(4), x)
    s.step(x, x)
    s.step(x, x)
    with pytest.raises(InputError, match="2 steps"):
        s.step(x, x)


@pytest.mark.parametrize("name,steps,shift,match", [
    ("ddim", 10, 5.0, "'ddim'.*dpm\\+\\+.*euler.*unipc"),
    ("unipc", 0, 5.0, "steps 0"),
    ("dpm++", 2.5, 5.0, "steps 2.5"),
    ("euler", 4, 0.0, "shift 0.0"),
    ("unipc", 4, math.inf, "shift inf"),
])
def test_make_solver_errors(name, steps, shift, match):
    with pytest.raises(InputError, match=match):
        make_solver(name, steps, shift)


def test_make_solver_one_step():
    for name in ("unipc", "dpm++", "euler"):
        s = make_solver(name, 1, 5.0)
        x = torch.randn(3)
        v = torch.randn(3)
        assert torch.equal(s.step(v, x), x - s.sigmas[0] * v)  # one step straight to x0
