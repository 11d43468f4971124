"""--cfg-steps K (phased guidance): forwards counted, K >= steps is plain CFG bit for bit."""

import pytest
import torch

from wanmoe import cli
from wanmoe.errors import InputError
from wanmoe.models.experts import ExpertSchedule
from wanmoe.sampling import make_solver
from wanmoe.sampling.guidance import CFGDenoiser, PhasedGuidance
from wanmoe.sampling.loop import denoise
from wanmoe.testing.tiny import write_tiny_official_a14b

C, F, H, W, L, D = 4, 2, 3, 5, 7, 8
STEPS = 8


class StandIn:
    """Deterministic batch-independent DiT stand-in; counts the guidance pass of every call."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(C, C, generator=g) * 0.3
        self.contexts = []  # mean of the context of each forward (cond > 0, uncond < 0)

    def __call__(self, x, t, context, seq_len=None):
        self.contexts.append(float(context[0].mean()))
        c = torch.stack([ctx.mean() for ctx in context]).view(-1, 1, 1, 1, 1)
        tt = t.to(torch.float32).view(-1, 1, 1, 1, 1) / 1000
        return torch.tanh(x) * c + tt * torch.cos(torch.einsum("oc,bcfhw->bofhw", self.mix, x))


def run(cfg_steps, batched=False, guidance=(4.0, 3.0)):
    g = torch.Generator().manual_seed(1)
    cond = [torch.randn(L, D, generator=g).abs() + 1.0]
    uncond = [-torch.randn(L, D, generator=g).abs() - 0.5]
    experts = {"high_noise": StandIn(2), "low_noise": StandIn(3)}
    cfg = CFGDenoiser(experts, cond, uncond, batched=batched)
    den = cfg if cfg_steps == "none" else PhasedGuidance(cfg, cfg_steps)
    schedule = ExpertSchedule.two_expert(0.875, *guidance)
    x = torch.randn(C, F, H, W, generator=torch.Generator().manual_seed(4))
    out = denoise(x, make_solver("unipc", STEPS, 12.0), schedule, den)
    return out, cfg.calls, experts


@pytest.mark.parametrize("k", [0, 1, 3, STEPS - 1])
def test_forwards_counted(k):
    _, calls, experts = run(k)
    assert calls == 2 * k + (STEPS - k)
    # the unconditional context (negative mean) is used on exactly the first k steps
    seq = experts["high_noise"].contexts + experts["low_noise"].contexts
    assert sum(m < 0 for m in seq) == k
    _, calls_b, _ = run(k, batched=True)  # a B=2 forward counts once
    assert calls_b == STEPS


@pytest.mark.parametrize("k", [STEPS, STEPS + 5])
def test_k_at_least_steps_is_plain_cfg_bit_for_bit(k):
    plain, calls_plain, _ = run("none")
    phased, calls, _ = run(k)
    assert calls == calls_plain == 2 * STEPS
    assert torch.equal(phased, plain)


def test_k0_is_guidance_one_and_k_changes_the_result():
    zero, calls, _ = run(0)
    one, calls_one, _ = run("none", guidance=(1.0, 1.0))
    assert calls == calls_one == STEPS and torch.equal(zero, one)
    assert not torch.equal(run(3)[0], run("none")[0])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from wanmoe.pipeline import load_pipeline

    return load_pipeline(write_tiny_official_a14b(tmp_path_factory.mktemp("a14b")), device="cpu")


KW = dict(size="64*64", frames=5, steps=6, seed=3, progress=False)


def test_pipeline_cfg_steps(pipe):
    plain = pipe.generate("a red ball", **KW)
    assert pipe.last_denoiser.calls == 2 * KW["steps"]
    same = pipe.generate("a red ball", **KW, cfg_steps=KW["steps"])
    assert torch.equal(same.latents, plain.latents)
    phased = pipe.generate("a red ball", **KW, cfg_steps=2)
    assert pipe.last_denoiser.calls == 2 * 2 + (KW["steps"] - 2)
    assert not torch.equal(phased.latents, plain.latents)


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_bad_cfg_steps_is_an_input_error(pipe, bad):
    with pytest.raises(InputError, match="cfg steps"):
        pipe.settings(cfg_steps=bad)


def test_cli_refuses_negative_cfg_steps(capsys):
    assert cli.main(["generate", "a ball", "--cfg-steps", "-2", "--out", "x.mp4"]) == 2
    assert "cfg steps -2" in capsys.readouterr().err


def test_cfg_steps_on_a_prepared_request(pipe):
    settings = pipe.settings(size=KW["size"], frames=KW["frames"], steps=KW["steps"], seed=KW["seed"])
    a = pipe.generate("a red ball", settings=settings, cfg_steps=2, progress=False)
    assert pipe.last_denoiser.calls == 2 * 2 + (KW["steps"] - 2)
    b = pipe.generate("a red ball", settings=pipe.settings(size=KW["size"], frames=KW["frames"],
                                                             steps=KW["steps"], seed=KW["seed"], cfg_steps=2),
                      progress=False)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(InputError, match="cfg steps"):
        pipe.generate("a red ball", settings=settings, cfg_steps=-1, progress=False)


def test_resumed_phased_run_keeps_the_step_index(pipe, tmp_path):
    # checkpoint after step 2, resume: steps 3..6 must still know they are past K = 3 or not
    kw = dict(KW, cfg_steps=3)
    plain = pipe.generate("a red ball", **kw)

    def stop(done, total, expert):
        if done == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "phased.ckpt"
    with pytest.raises(KeyboardInterrupt):
        pipe.generate("a red ball", **kw, checkpoint=ckpt, checkpoint_every=2, on_step=stop)
    resumed = pipe.generate("a red ball", **kw, resume=ckpt)
    assert pipe.last_denoiser.calls == 2 * 1 + (KW["steps"] - 3)  # step 2 with CFG, 3..5 without
    assert torch.equal(resumed.latents, plain.latents)
