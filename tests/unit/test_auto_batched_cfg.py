"""Batched CFG turned on when memory allows (batched_cfg unset): the decision and its wiring."""

import math

import pytest
import torch

import wanmoe.runtime.cfg_batch as CB
from wanmoe import cli
from wanmoe.configs import T2V_A14B
from wanmoe.errors import InputError
from wanmoe.request import runtime_config
from wanmoe.runtime.cfg_batch import HEADROOM, decide_batched_cfg
from wanmoe.runtime.memory import dit_activation_bytes, weight_transient_bytes
from wanmoe.testing.tiny import write_tiny_official_a14b

GiB = 2**30
TOKENS_480P = 21 * (480 // 16) * (832 // 16)  # latent frames x patches: 32760
TOKENS_720P = 21 * (720 // 16) * (1280 // 16)  # 75600


def decide(tokens, free, device="cuda", **kw):
    return decide_batched_cfg(T2V_A14B, tokens, torch.bfloat16, device, free, "fp8", **kw)


def test_cpu_and_no_uncond_keep_separate_passes():
    assert not decide(TOKENS_480P, 10**15, device="cpu").batched
    assert "cpu" in decide(TOKENS_480P, None, device="cpu").reason
    assert not decide(TOKENS_480P, 10**15, has_uncond=False).batched
    assert not decide(TOKENS_480P, None).batched  # free memory unknown


def test_decision_follows_the_memory_model():
    # B=2 activations (the planner's model) + the fp8 weight path's transient, over the headroom
    need = dit_activation_bytes(T2V_A14B, TOKENS_480P, 2, torch.bfloat16) + \
        weight_transient_bytes(T2V_A14B, "fp8", torch.bfloat16)
    edge = math.ceil(need / HEADROOM)
    assert decide(TOKENS_480P, edge).batched and not decide(TOKENS_480P, edge - 2).batched
    # the activations of a second sample: B=2 needs about twice what B=1 does
    one = dit_activation_bytes(T2V_A14B, TOKENS_480P, 1, torch.bfloat16)
    assert 1.9 * one < need - weight_transient_bytes(T2V_A14B, "fp8", torch.bfloat16) < 2.01 * one
    # H100 80 GB with one fp8 A14B expert resident (~15 GB) + T5 + VAE: ~55 GB free
    assert decide(TOKENS_480P, 55 * GiB).batched and decide(TOKENS_720P, 55 * GiB).batched
    # a card whose free memory lies between the two needs: 480P batched, 720P separate
    need720 = dit_activation_bytes(T2V_A14B, TOKENS_720P, 2, torch.bfloat16) + \
        weight_transient_bytes(T2V_A14B, "fp8", torch.bfloat16)
    assert need720 > need
    between = int((need + need720) / 2 / HEADROOM)
    assert decide(TOKENS_480P, between).batched
    r = decide(TOKENS_720P, between)
    assert not r.batched and "separate passes" in r.reason and f"B=2 needs {need720 / GiB:.2f} GiB" in r.reason
    assert not decide(TOKENS_480P, 1 * GiB).batched  # a nearly full card


def test_runtime_and_cli_values():
    assert runtime_config("cpu").batched_cfg is None  # unset: decided per run
    assert runtime_config("cpu", batched_cfg=True).batched_cfg is True
    assert runtime_config("cpu", batched_cfg=False).batched_cfg is False
    with pytest.raises(InputError, match="batched_cfg"):
        runtime_config("cpu", batched_cfg="yes")
    parse = cli.build_parser().parse_args
    assert parse(["generate", "x"]).batched_cfg is None
    assert parse(["generate", "x", "--batched-cfg"]).batched_cfg is True
    assert parse(["generate", "x", "--no-batched-cfg"]).batched_cfg is False


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from wanmoe.pipeline import load_pipeline

    return load_pipeline(write_tiny_official_a14b(tmp_path_factory.mktemp("a14b")),
                         runtime=runtime_config("cpu"))


KW = dict(size="64*64", frames=5, steps=4, seed=2, progress=False)


def test_pipeline_cpu_auto_is_separate(pipe):
    plain = pipe.generate("a ball", **KW)
    assert pipe.runtime.batched_cfg is None and not pipe.cfg_batching.batched
    assert pipe.last_denoiser.calls == 2 * KW["steps"]  # cond and uncond one after another
    forced = pipe.generate("a ball", **KW, batched_cfg=False)
    assert torch.equal(forced.latents, plain.latents)


def test_pipeline_batches_when_the_decision_says_so(pipe, monkeypatch):
    seen = []

    def fits(preset, tokens, dtype, device_type, free, weights, per_token_time, has_uncond):
        seen.append((tokens, has_uncond))
        return CB.CFGBatchDecision(True, "fits")

    monkeypatch.setattr(CB, "decide_batched_cfg", fits)
    separate = pipe.generate("a ball", **KW, batched_cfg=False)
    batched = pipe.generate("a ball", **KW)
    assert pipe.cfg_batching.batched and pipe.last_denoiser.calls == KW["steps"]  # B=2 forwards
    rel = ((batched.latents - separate.latents).norm() / separate.latents.norm()).item()
    assert rel < 1e-5
    # tokens: 5 frames -> 2 latent frames, 64/8 = 8 latent pixels, patch 2x2 -> 2 * 4 * 4
    assert seen == [(2 * 4 * 4, True)]
    pipe.generate("a ball", **KW, guide_scale=1.0)  # guidance 1: nothing to batch
    assert seen[-1] == (32, False)
