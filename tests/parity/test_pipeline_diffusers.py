"""The sampling pipeline vs diffusers' `WanPipeline`: the MoE path (two transformers,
boundary_ratio 0.875) and the dense TI2V-5B path (`expand_timesteps=True`).

Same tiny random weights (official names -> diffusers names through `keymaps.dit`), the same
prompt / negative-prompt embeddings (zero-padded to text_len = 512 rows for diffusers, exactly
what the official DiT does to the trimmed T5 output), the same initial latents and the same
sampler: diffusers' own UniPC feeds `1000 * sigma` timesteps from a different sigma grid than the
official FlowUniPC (spec §4.4, diffusers-differences.md), so diffusers is given our solver through
a small scheduler adapter. Both loops then feed the same int64 timesteps, pick the expert with
the same rule (t >= 875 -> transformer / high noise) and combine CFG in fp32.

What differs, and why the tolerance is not zero (fp32 on CPU): diffusers computes the timestep
sinusoid in float32 (ours: float64, as official; at t ~ 1000 the fp32 angle t*w carries ~6e-5
absolute error), RoPE with real fp32 cos/sin (ours: complex float64), and attention without
padding masks (no padding at this size, so no effect). These are ~1e-6..1e-5 relative per
forward; 40 steps of a random model accumulate them. The expert sequence must match exactly.
Measured max |diff| / max |latent|: 8e-7 (MoE, 40 steps), 1.3e-6 (MoE, 12 steps), 2.1e-6
(dense, 10 steps); the tolerance 2e-5 leaves ~10x headroom for other CPUs / BLAS builds.
"""

from dataclasses import replace

import pytest
import torch
from tolerance import assert_close_rel, rel_err

from wanmoe.configs import T2V_A14B
from wanmoe.loading.keymaps.dit import official_to_diffusers
from wanmoe.models.dit import WanDiT
from wanmoe.pipeline import WanPipeline
from wanmoe.testing.references import SolverScheduler
from wanmoe.testing.tiny import dit_state, tiny_dit_config
from wanmoe.validate import settings_for

diffusers = pytest.importorskip("diffusers")

TEXT_LEN = 512




def _diffusers_transformer(state: dict, cfg):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, rope_max_seq_len=1024)
    missing, unexpected = model.load_state_dict(
        {official_to_diffusers(k): v for k, v in state.items()}, strict=True)
    assert not missing and not unexpected
    return model.eval()


def _calls(model, log: list, tag: str):
    return model.register_forward_hook(lambda *_: log.append(tag))


def _per_step(log: list) -> list:
    """Two forwards (cond, uncond) per step through the same model -> one entry per step."""
    assert len(log) % 2 == 0 and all(a == b for a, b in zip(log[::2], log[1::2]))
    return log[::2]


# high-noise steps: t >= 875 <=> s >= 0.875 / (12 - 11 * 0.875) on s = linspace(0.999, 0, N+1) (spec §3)
@pytest.mark.parametrize("steps,high", [(40, 26), (12, 8)])
def test_moe_pipeline_matches_diffusers(steps, high):
    from diffusers import WanPipeline as DiffusersWanPipeline

    torch.manual_seed(0)
    cfg = tiny_dit_config(16)
    preset = replace(T2V_A14B, dit=cfg)
    states = {"high_noise": dit_state(cfg, 1), "low_noise": dit_state(cfg, 2)}
    ours = {}
    for name, state in states.items():
        m = WanDiT(cfg)
        m.load_state_dict(state, strict=True)
        ours[name] = m.eval().set_compute_dtype(torch.float32)
    pipe = WanPipeline(preset, ours, None, None, device=torch.device("cpu"), dtype=torch.float32)

    cond = [torch.randn(7, cfg.text_dim)]  # trimmed T5 outputs of different lengths
    uncond = [torch.randn(11, cfg.text_dim)]
    noise = torch.randn(16, 2, 8, 8)  # [z, F_lat, H/8, W/8] for 64x64, 5 frames
    settings = settings_for(preset, size="64*64", frames=5, steps=steps, seed=0)
    latents, experts = pipe.sample(noise, cond, uncond, settings, progress=False)

    def pad(c):  # official: zero-pad the trimmed context to text_len rows
        return torch.cat([c, c.new_zeros(TEXT_LEN - c.shape[0], c.shape[1])])[None]

    high_model = _diffusers_transformer(states["high_noise"], cfg)
    low_model = _diffusers_transformer(states["low_noise"], cfg)
    log: list = []
    hooks = [_calls(high_model, log, "high_noise"), _calls(low_model, log, "low_noise")]
    ref = DiffusersWanPipeline(tokenizer=None, text_encoder=None, vae=None,
                               scheduler=SolverScheduler("unipc", preset.shift),
                               transformer=high_model, transformer_2=low_model,
                               boundary_ratio=preset.boundary)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = ref(prompt_embeds=pad(cond[0]), negative_prompt_embeds=pad(uncond[0]),
                  latents=noise[None].clone(), height=64, width=64, num_frames=5,
                  num_inference_steps=steps, guidance_scale=4.0, guidance_scale_2=3.0,
                  output_type="latent", return_dict=False)[0][0]
    for h in hooks:
        h.remove()

    # spec §3 / §4.7: 40 steps at shift 12 -> 26 high-noise steps then 14 low-noise steps
    assert experts == ["high_noise"] * high + ["low_noise"] * (steps - high)
    assert _per_step(log) == experts
    print(f"steps={steps}: max|diff| / max|ref| {rel_err(latents, out):.3e}")
    # fp32 sinusoid/RoPE differences only (see module docstring); measured 8e-7 (40 steps) and 1.3e-6 (12 steps) relative
    assert_close_rel(latents, out, rtol=2e-5)


def test_dense_ti2v_pipeline_matches_diffusers_expand_timesteps():
    """TI2V-5B path: one dense DiT, guide 5.0, shift 5; diffusers feeds per-token timesteps
    (`expand_timesteps=True`, spec §4.8), we feed one per sample: in t2v mode they are equal."""
    from diffusers import WanPipeline as DiffusersWanPipeline

    from wanmoe.configs import TI2V_5B

    torch.manual_seed(1)
    cfg = tiny_dit_config(48)
    preset = replace(TI2V_5B, dit=cfg)
    state = dit_state(cfg, 3)
    ours = WanDiT(cfg)
    ours.load_state_dict(state, strict=True)
    pipe = WanPipeline(preset, {"dense": ours.eval()}, None, None, device=torch.device("cpu"),
                       dtype=torch.float32)
    cond, uncond = [torch.randn(5, cfg.text_dim)], [torch.randn(9, cfg.text_dim)]
    noise = torch.randn(48, 2, 4, 4)  # [z, F_lat, H/16, W/16] for 64x64, 5 frames
    settings = settings_for(preset, size="64*64", frames=5, steps=10, seed=0)
    latents, experts = pipe.sample(noise, cond, uncond, settings, progress=False)

    def pad(c):
        return torch.cat([c, c.new_zeros(TEXT_LEN - c.shape[0], c.shape[1])])[None]

    ref = DiffusersWanPipeline(tokenizer=None, text_encoder=None, vae=None,
                               scheduler=SolverScheduler("unipc", preset.shift),
                               transformer=_diffusers_transformer(state, cfg), transformer_2=None,
                               boundary_ratio=None, expand_timesteps=True)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = ref(prompt_embeds=pad(cond[0]), negative_prompt_embeds=pad(uncond[0]),
                  latents=noise[None].clone(), height=64, width=64, num_frames=5,
                  num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                  return_dict=False)[0][0]
    assert experts == ["dense"] * 10
    print(f"ti2v: max|diff| / max|ref| {rel_err(latents, out):.3e}")
    assert_close_rel(latents, out, rtol=2e-5)
