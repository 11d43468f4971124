"""The denoise loop: expert per step, stage-change hook, equivalence with a hand-written loop."""

import torch

from wanmoe.configs import T2V_A14B, TI2V_5B
from wanmoe.models.experts import ExpertSchedule
from wanmoe.sampling import make_solver
from wanmoe.sampling.guidance import CFGDenoiser
from wanmoe.sampling.loop import denoise

# spec §4.7: steps 0-25 high-noise (t >= 875), 26-39 low-noise for UniPC, 40 steps, shift 12
EXPECTED_A14B = ["high_noise"] * 26 + ["low_noise"] * 14


def fake_denoiser(log):
    def den(stage, x, t):
        log.append((stage.expert, int(t)))
        return torch.sin(x) * (1 + stage.guidance) * (int(t) / 1000)
    return den


def test_progress_sees_expert_per_step_and_stage_change_once():
    solver = make_solver("unipc", 40, 12.0)
    sched = ExpertSchedule.from_preset(T2V_A14B)
    seen, changes, calls = [], [], []
    x = torch.randn(2, 3, 4)
    out = denoise(x, solver, sched, fake_denoiser(calls),
                  progress=lambda i, n, st, t: seen.append((i, n, st.expert, int(t))),
                  on_stage_change=lambda a, b: changes.append((a.expert, b.expert)))
    assert [s[0] for s in seen] == list(range(40)) and {s[1] for s in seen} == {40}
    assert [s[2] for s in seen] == EXPECTED_A14B
    assert [s[3] for s in seen] == solver.timesteps.tolist()
    assert [c[0] for c in calls] == EXPECTED_A14B
    assert changes == [("high_noise", "low_noise")]
    assert out.shape == x.shape and out.dtype == torch.float32


def test_dense_never_changes_stage():
    solver = make_solver("dpm++", 6, 5.0)
    changes = []
    denoise(torch.randn(3), solver, ExpertSchedule.from_preset(TI2V_5B), fake_denoiser([]),
            on_stage_change=lambda a, b: changes.append(b))
    assert changes == []


def test_loop_equals_hand_written_loop():
    # The loop is exactly: t -> stage -> CFG -> solver.step, nothing else.
    cond, uncond = [torch.ones(3, 4)], [torch.zeros(2, 4) - 1]

    def model(x, t, context, seq_len=None):
        return torch.tanh(x) * context[0].mean() + t.float()[:, None, None, None, None] / 1e3

    experts = {"high_noise": model, "low_noise": lambda *a, **k: 0.5 * model(*a, **k)}
    sched = ExpertSchedule.from_preset(T2V_A14B)
    x0 = torch.randn(2, 2, 3, 3)
    out = denoise(x0, make_solver("unipc", 12, 12.0), sched,
                  CFGDenoiser(experts, cond, uncond, batched=False))
    solver, den, x = make_solver("unipc", 12, 12.0), CFGDenoiser(experts, cond, uncond, False), x0
    for t in solver.timesteps:
        x = solver.step(den(sched.select(t), x, t), x)
    assert torch.equal(out, x)
