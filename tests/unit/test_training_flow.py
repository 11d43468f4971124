"""Flow-matching pieces of the trainer against the spec (§3, §4.1, §4.3) and the sampler."""

import math

import pytest
import torch
from tolerance import assert_close_rel

from wanmoe.demo.training import flow as F


def test_shift_matches_spec_formula_and_inverts():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    for shift in (1.0, 5.0, 12.0):
        want = shift * u / (1 + (shift - 1) * u)  # spec §4.3
        got = F.shift_sigma(u, shift)
        assert_close_rel(got, want, rtol=1e-15)  # float64, measured 0
        for s in (0.0, 0.3, 0.875, 1.0):
            # through a float32 tensor; sigma lies in [0, 1], so abs_tol is relative to the
            # range: measured 1.8e-8, allow ~1 fp32 ulp of 1
            assert math.isclose(float(F.shift_sigma(torch.tensor(F.unshift_sigma(s, shift)), shift)),
                                s, abs_tol=1.2e-7)
    # spec §3: sigma 0.875 is s = 0.368 of the linear schedule at shift 12 (3 printed digits)
    assert F.unshift_sigma(0.875, 12.0) == pytest.approx(0.368, abs=5e-4)


def test_expert_ranges_split_at_the_boundary():
    assert F.sigma_range("high_noise", 0.875) == (0.875, 1.0)
    assert F.sigma_range("low_noise", 0.875) == (0.0, 0.875)
    assert F.sigma_range("dense", None) == (0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    hi = F.sample_sigmas(4000, 5.0, 0.875, 1.0, g)
    lo = F.sample_sigmas(4000, 5.0, 0.0, 0.875, g)
    assert hi.min() >= 0.875 and hi.max() <= 1.0 and lo.max() < 0.875 and lo.min() > 0
    # the whole range sampled through the shift has the density of the shifted uniform grid:
    # P(sigma >= b) = 1 - unshift(b) = 0.417; a fraction of 20000 seeded draws: binomial std
    # 0.0035, so abs 0.015 is ~4 std
    full = F.sample_sigmas(20000, 5.0, 0.0, 1.0, g)
    frac = float((full >= 0.875).float().mean())
    assert frac == pytest.approx(1 - F.unshift_sigma(0.875, 5.0), abs=0.015)


def test_noisy_pair_is_the_spec_interpolation():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 2, 2, 2, generator=g), torch.randn(3, 4, 2, 2, 2, generator=g)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    xt, v = F.noisy_pair(x0, sigma, eps)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    assert_close_rel(xt[1], 0.5 * x0[1] + 0.5 * eps[1], rtol=2.4e-7)  # measured 0 (seeds 0..299)
    assert torch.equal(v, eps - x0)
    # the solvers' data prediction x0_hat = x_sigma - sigma * v recovers x0 exactly
    # measured max|diff| / max|x0| <= 1.0e-7 (seeds 0..299): one fp32 rounding
    assert_close_rel(xt - sigma.view(-1, 1, 1, 1, 1) * v, x0, rtol=5e-7)


def test_flow_loss_is_zero_for_the_oracle_and_uses_t_1000_sigma():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 4, 1, 2, 2, generator=g), torch.randn(2, 4, 1, 2, 2, generator=g)
    sigma = torch.tensor([0.25, 0.9])
    seen = {}

    def oracle(xt, t, context):
        seen["t"] = t
        return eps - x0

    assert F.flow_loss(oracle, x0, sigma, eps, [None, None]).item() == 0.0
    assert torch.allclose(seen["t"], torch.tensor([250.0, 900.0]))
