"""Demo training loop on a tiny model: learning, EMA, resume, export -> pipeline load."""

import dataclasses
import random

import pytest
import torch
from tolerance import assert_close_rel

from wanmoe.configs import DiTConfig, T5Config
from wanmoe.demo.clips import training_scenes
from wanmoe.demo.preset import DEMO, demo_preset
from wanmoe.demo.training.common import EMA, lr_at
from wanmoe.demo.training.dit_trainer import DiTRun, DiTTrainConfig


@pytest.fixture(scope="module")
def tok():
    from wanmoe.text.tokenizer import PromptTokenizer
    from wanmoe.demo.training.text import train_caption_tokenizer

    return PromptTokenizer(train_caption_tokenizer(96, n=300), text_len=8)


def _preset(dense=False):
    dit = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=4, out_dim=4,
                    freq_dim=32, text_dim=16, text_len=8)
    t5 = T5Config(vocab_size=96, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=1,
                  text_len=8)
    return dataclasses.replace(demo_preset(dense=dense), dit=dit, t5=t5)


def _run(tmp, tok, steps, mode="moe", save_every=2, **kw):
    lat = torch.randn(6, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    tc = DiTTrainConfig(steps=steps, batch=3, save_every=save_every, log_every=1, **kw)
    return DiTRun(_preset(mode == "dense"), tok, lat, training_scenes(6), tmp, tc, mode)


def test_demo_preset_is_a_two_expert_wan22_model():
    assert [e.name for e in DEMO.experts] == ["high_noise", "low_noise"]
    assert DEMO.vae.version == "2.2" and DEMO.vae.stride == (4, 16, 16) and DEMO.fps == 16
    assert DEMO.dit.in_dim == DEMO.vae.z_dim and DEMO.dit.text_dim == DEMO.t5.dim
    assert len(set(DEMO.dit.rope_split)) > 1 or DEMO.dit.rope_split[0] > 0
    assert demo_preset(dense=True).boundary is None


def test_moe_alternates_experts_and_resume_equals_uninterrupted(tmp_path, tok):
    a = _run(tmp_path / "a", tok, 4)
    names = []
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for _ in range(4):
        names.append(a.train_step(rng, gen)[0])
    assert names == ["high_noise", "low_noise", "high_noise", "low_noise"]
    full = _run(tmp_path / "full", tok, 4)
    full.train()
    part = _run(tmp_path / "part", tok, 2)
    part.train()  # stops after 2 steps, state saved
    resumed = _run(tmp_path / "part", tok, 4)
    resumed.train()  # picks up at step 2
    assert resumed.step == 4
    for k in full.experts:
        for (n, p), q in zip(full.experts[k].named_parameters(), resumed.experts[k].parameters()):
            assert torch.equal(p, q), n
    assert (tmp_path / "part" / "dit_moe_loss.jsonl").read_text().count("\n") == 4


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path, tok):
    run = _run(tmp_path, tok, 1000, mode="dense", warmup=1, lr=3e-3)
    # same clips, captions, sigmas and noise every step: a memorisable batch
    first = run.train_step(random.Random(0), torch.Generator().manual_seed(0))[1]
    for _ in range(30):
        last = run.train_step(random.Random(0), torch.Generator().manual_seed(0))[1]
    assert last < 0.8 * first


def test_ema_and_lr_schedule():
    m = torch.nn.Linear(2, 2)
    e = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    e.update(m, step=100)  # past warm-up: decay 0.5
    w0 = e.shadow.weight.clone()
    assert e.shadow.weight.requires_grad is False
    e.update(m, step=100)
    # fp32 rounding of values ~1: measured max|diff| / max|ref| <= 1.5e-7 (init seeds 0..99)
    assert_close_rel(1.0 - e.shadow.weight, 0.5 * (1.0 - w0), rtol=5e-7)
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)


def test_export_folder_loads_through_the_pipeline(tmp_path, tok):
    from wanmoe.loading.checkpoint import resolve_checkpoint
    from wanmoe.demo.training.export import write_folder
    from wanmoe.vae import build_vae

    run = _run(tmp_path, tok, 1)
    preset = run.preset
    vae_cfg = dataclasses.replace(preset.vae, dim=4, dec_dim=4, z_dim=4, mean=(0.0,) * 4,
                                  std=(1.0,) * 4)
    preset = dataclasses.replace(preset, vae=vae_cfg)
    out = write_folder(tmp_path / "model", preset, {k: m.state_dict() for k, m in run.experts.items()},
                       run.text.state_dict(), build_vae(vae_cfg).state_dict(), tok.tokenizer)
    spec = resolve_checkpoint(out)
    assert spec.preset == preset
    assert set(spec.experts) == {"high_noise", "low_noise"}


def test_demo_preset_patch_option():
    """`wanmoe train dit --patch 1` gives 8x8 tokens a latent frame instead of Wan2.2's 4x4."""
    assert DEMO.dit.patch_size == (1, 2, 2) and DEMO.size_multiple == 32
    p1 = demo_preset(patch=1)
    assert p1.dit.patch_size == (1, 1, 1) and p1.size_multiple == 16
    assert p1.dit.dim == DEMO.dit.dim and p1.experts == DEMO.experts
    with pytest.raises(ValueError, match="patch is 4"):
        demo_preset(patch=4)
