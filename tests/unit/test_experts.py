"""ExpertSchedule: the MoE switch rule of spec §3, SNR conversion, N experts, validation."""

import math

import pytest
import torch

from wanmoe.configs import T2V_A14B, TI2V_5B
from wanmoe.errors import InputError
from wanmoe.models.experts import (ExpertSchedule, ExpertStage, boundary_from_snr,
                                   snr_from_boundary)


def test_a14b_switch_at_875():
    sched = ExpertSchedule.from_preset(T2V_A14B)
    # spec §3: t >= 875 -> high-noise expert with CFG 4.0, else low-noise with 3.0
    for t, name, g in [(999, "high_noise", 4.0), (875, "high_noise", 4.0),
                       (874, "low_noise", 3.0), (0, "low_noise", 3.0), (1000, "high_noise", 4.0)]:
        st = sched.select(t)
        assert (st.expert, st.guidance) == (name, g), t
    # tensors (0-dim and [1]) and floats work too
    assert sched.select(torch.tensor(875)).expert == "high_noise"
    assert sched.select(torch.tensor([874])).expert == "low_noise"
    assert sched.select(874.999).expert == "low_noise"


def test_two_expert_boundary_0_9():
    sched = ExpertSchedule.two_expert(0.9, 3.5, 3.5)  # I2V-A14B values (spec §1.2)
    assert sched.select(900).expert == "high_noise"
    assert sched.select(899).expert == "low_noise"
    assert sched.stages[0].t_low == 0.9 * 1000  # the official float product


def test_snr_round_trip():
    # spec §3: σ = 0.875 <-> SNR = 1/49; I2V 0.9 <-> SNR ≈ 0.0123
    assert snr_from_boundary(0.875) == pytest.approx(1 / 49, rel=1e-15)
    assert boundary_from_snr(1 / 49) == pytest.approx(0.875, rel=1e-15)
    # the spec prints 0.0123 and -1.946: abs is half a unit of the last printed digit (or one)
    assert snr_from_boundary(0.9) == pytest.approx(0.0123, abs=5e-5)
    assert math.log(math.sqrt(snr_from_boundary(0.875))) == pytest.approx(-1.946, abs=1e-3)
    for b in (0.1, 0.5, 0.875, 0.99):
        assert boundary_from_snr(snr_from_boundary(b)) == pytest.approx(b, rel=1e-12)
    sched = ExpertSchedule.two_expert(boundary_from_snr(1 / 49), 4.0, 3.0)
    assert sched.select(875).expert == "high_noise" and sched.select(874).expert == "low_noise"


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "0.1"])
def test_snr_errors(bad):
    with pytest.raises(InputError, match="SNR"):
        boundary_from_snr(bad)


def test_three_experts():
    sched = ExpertSchedule.from_boundaries(("a", "b", "c"), (0.9, 0.5), (5.0, 4.0, 3.0))
    assert [s.expert for s in sched.stages] == ["a", "b", "c"]
    picks = {t: sched.select(t) for t in (999, 900, 899, 500, 499, 0)}
    assert [picks[t].expert for t in (999, 900, 899, 500, 499, 0)] == list("aabbcc")
    assert sched.select(600).guidance == 4.0
    assert sched.split_counts([999, 950, 700, 10]) == {"a": 2, "b": 1, "c": 1}
    assert sched.experts == ("a", "b", "c")


def test_dense():
    sched = ExpertSchedule.from_preset(TI2V_5B)
    assert sched.stages == (ExpertStage("dense", 0.0, math.inf, 5.0),)
    assert sched.select(1000).expert == "dense" and sched.select(0).guidance == 5.0
    assert ExpertSchedule.dense(2.0, expert="x").select(500).expert == "x"


def test_guidance_override_rules():
    # None -> each ExpertSpec.guidance (high 4.0, low 3.0)
    s = ExpertSchedule.from_preset(T2V_A14B)
    assert [st.guidance for st in s.stages] == [4.0, 3.0]
    # one float -> every expert (the official CLI's --sample_guide_scale, spec §1.4)
    s = ExpertSchedule.from_preset(T2V_A14B, guidance=5.0)
    assert [st.guidance for st in s.stages] == [5.0, 5.0]
    # a tuple -> per expert, high noise first
    s = ExpertSchedule.from_preset(T2V_A14B, guidance=(6.0, 2.0))
    assert [st.guidance for st in s.stages] == [6.0, 2.0]
    assert s.select(900).guidance == 6.0 and s.select(100).guidance == 2.0
    # boundary override
    s = ExpertSchedule.from_preset(T2V_A14B, boundary=0.9)
    assert s.select(899).expert == "low_noise"
    with pytest.raises(InputError, match="give 1 or 2"):
        ExpertSchedule.from_preset(T2V_A14B, guidance=(1.0, 2.0, 3.0))
    with pytest.raises(InputError, match="single expert"):
        ExpertSchedule.from_preset(TI2V_5B, boundary=0.875)
    assert ExpertSchedule.from_preset(TI2V_5B, guidance=(7.0,)).stages[0].guidance == 7.0


@pytest.mark.parametrize("stages,match", [
    ((), "at least one"),
    ((ExpertStage("a", 0.0, 1000.0, 1.0),), "inf"),
    ((ExpertStage("a", 10.0, math.inf, 1.0),), "t_low=0"),
    ((ExpertStage("a", 875.0, math.inf, 1.0), ExpertStage("b", 0.0, 870.0, 1.0)), "gap"),
    ((ExpertStage("a", 875.0, math.inf, 1.0), ExpertStage("b", 0.0, 880.0, 1.0)), "overlap"),
    ((ExpertStage("b", 0.0, 875.0, 1.0), ExpertStage("a", 875.0, math.inf, 1.0)), "inf"),
    ((ExpertStage("a", 5.0, 5.0, 1.0),), "t_low < t_high"),
    ((ExpertStage("", 0.0, math.inf, 1.0),), "non-empty"),
])
def test_validation_errors(stages, match):
    with pytest.raises(InputError, match=match):
        ExpertSchedule(stages)


@pytest.mark.parametrize("kwargs,match", [
    (dict(boundary=0.0, guidance_high=4.0, guidance_low=3.0), "boundary 0.0"),
    (dict(boundary=1.0, guidance_high=4.0, guidance_low=3.0), "boundary 1.0"),
    (dict(boundary=0.5, guidance_high=4.0, guidance_low=3.0, names=("x",)), "2 expert names"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        ExpertSchedule.two_expert(**kwargs)


def test_from_boundaries_errors():
    with pytest.raises(InputError, match="need 2 boundaries"):
        ExpertSchedule.from_boundaries("abc", (0.5,), (1, 1, 1))
    with pytest.raises(InputError, match="strictly decreasing"):
        ExpertSchedule.from_boundaries("abc", (0.3, 0.6), (1, 1, 1))
    with pytest.raises(InputError, match="3 guidance"):
        ExpertSchedule.from_boundaries("abc", (0.6, 0.3), (1, 1))
    with pytest.raises(InputError, match="must be >= 0"):
        ExpertSchedule.dense(1.0).select(-1)


def test_guide_scale_is_validated_once_at_the_edge():
    # One rule for user guide scales (validate.parse_guide_scale: finite, >= 0, 1 or N values);
    # the schedule takes what the validated request gives it.
    from wanmoe.validate import parse_guide_scale, settings_for

    assert parse_guide_scale("5", 2) == (5.0, 5.0)
    assert parse_guide_scale("4.0, 3.0", 2) == (4.0, 3.0)
    req = settings_for(T2V_A14B, guide_scale="4.5,2.5", seed=1)
    assert [st.guidance for st in req.schedule.stages] == [4.5, 2.5]
    assert req.schedule is req.schedule  # built once per request
    for bad in ("", "a,b", "4,,3", "nan", "-1", "inf", "1,2,3"):
        with pytest.raises(InputError, match="guide scale"):
            parse_guide_scale(bad, 2)
