"""Train the tiny demo Wan2.2 VAE on crops of procedural clips, then measure latent statistics.

The VAE is fully convolutional apart from per-frame attention, so it trains on small random
crops (32x32, 5 frames = 2 latent frames) that mostly contain an object, which costs a fraction
of whole 128x128x17 clips. Loss: L1 + MSE on pixels (object pixels weighted 4x), a small L2 pull on the latent mean (keeps
its scale sane).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanmoe.configs import VAEConfig
from wanmoe.demo.clips import render, sample_scene, to_tensor
from wanmoe.demo.training.common import EMA, LossLog, load_state, lr_at, progress, save_state


@dataclass(frozen=True)
class VAETrainConfig:
    """Hyper-parameters of a VAE run."""

    steps: int = 2000
    batch: int = 4
    crop: int = 64
    frames: int = 9
    lr: float = 2e-3
    latent_l2: float = 1e-4
    colour_weight: float = 1.0  # L1 on 8x8-pooled colours (speeds up learning flat colours)
    latent_noise: float = 0.0  # noise (x per-channel std) on the latent mean before decoding
    seed: int = 0
    log_every: int = 10
    save_every: int = 100


def sample_crops(rng: random.Random, n: int, crop: int, frames: int) -> torch.Tensor:
    """[n, 3, frames, crop, crop] in [-1, 1]: random training scenes, windows and crops."""
    out = []
    for _ in range(n):
        scene = sample_scene(rng.randrange(1 << 30))
        video = render(scene)  # [17, 128, 128, 3]
        t0 = rng.choice([0, 0, rng.randrange(0, video.shape[0] - frames + 1)])
        clip = video[t0:t0 + frames]
        h, w = clip.shape[1:3]
        fg = np.argwhere(np.any(clip[frames // 2] != clip[frames // 2, 0, 0], axis=-1))
        if len(fg) and rng.random() < 0.8:  # centre on an object pixel most of the time
            cy, cx = fg[rng.randrange(len(fg))]
        else:
            cy, cx = rng.randrange(h), rng.randrange(w)
        y = int(np.clip(cy - crop // 2 + rng.randrange(-6, 7), 0, h - crop))
        x = int(np.clip(cx - crop // 2 + rng.randrange(-6, 7), 0, w - crop))
        out.append(to_tensor(clip[:, y:y + crop, x:x + crop]))
    return torch.stack(out)


@torch.no_grad()
def skip_init(vae) -> None:
    """Zero the last conv of every residual branch, attention projection and resample conv.

    The untrained VAE then is conv1 -> parameter-free AvgDown/DupUp shortcuts -> head: a
    shallow autoencoder that reconstructs flat colours after a few dozen steps, and the
    residual branches learn the detail on top (same architecture, only the init differs).
    """
    from wanmoe.vae.blocks import AttentionBlock, Resample, ResidualBlock

    def zero(m) -> None:
        m.weight.zero_()
        if m.bias is not None:
            m.bias.zero_()

    for m in vae.modules():
        if isinstance(m, ResidualBlock):
            zero(m.residual[-1])
        elif isinstance(m, AttentionBlock):
            zero(m.proj)
        elif isinstance(m, Resample):
            zero(m.resample[-1])
            if hasattr(m, "time_conv"):
                m.time_conv.bias.zero_()


def vae_loss(vae, x: torch.Tensor, tc: VAETrainConfig) -> tuple[torch.Tensor, dict]:
    """Reconstruction loss of a batch through the full-sequence (unchunked) path."""
    mu, _ = vae.encode_moments(x, chunked=False)  # raw mean [B, z, F, h, w]
    # per-channel scale: a global std lets one large channel's noise drown the colour channels
    z = mu + tc.latent_noise * torch.randn_like(mu) * mu.detach().std(dim=(0, 2, 3, 4), keepdim=True)
    y = vae.decode_pixels(vae.normalize(z), chunked=False)
    # object pixels (far from the crop's median colour) weigh 4x: they are few but carry the
    # colour and position the demo is judged on
    med = x.flatten(2).median(-1).values[..., None, None, None]  # [B, 3, 1, 1, 1]
    w = 1 + 3 * ((x - med).abs().sum(1, keepdim=True) > 0.2).float()  # [B, 1, T, H, W]
    l1 = (w * (y - x).abs()).mean() / w.mean()
    mse = (w * (y - x).square()).mean() / w.mean()
    reg = mu.square().mean()
    loss = l1 + mse + tc.latent_l2 * reg
    if tc.colour_weight:
        pool = torch.nn.functional.avg_pool3d
        loss = loss + tc.colour_weight * (pool(y, (1, 8, 8)) - pool(x, (1, 8, 8))).abs().mean()
    return loss, {"l1": l1.item(), "mse": mse.item(), "mu2": reg.item()}


def train_vae(cfg: VAEConfig, out_dir: Path, tc: VAETrainConfig) -> Path:
    """Train (or resume) in `out_dir/vae_state.pt`; returns that path."""
    from wanmoe.vae import build_vae
    from wanmoe.vae.blocks import use_reference_kernels

    torch.manual_seed(tc.seed)
    vae = build_vae(cfg)
    skip_init(vae)
    use_reference_kernels(vae, True)  # F.conv3d: its backward is faster than oneDNN's here
    opt = torch.optim.AdamW(vae.parameters(), lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = EMA(vae, decay=0.99)
    state_path = out_dir / "vae_state.pt"
    state = load_state(state_path)
    step = 0
    if state is not None:
        vae.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    rng = random.Random(tc.seed * 31 + step)  # resumed runs continue with fresh samples
    log = LossLog(out_dir / "vae_loss.jsonl")
    bar = progress(tc.steps, step, "vae")
    while step < tc.steps:
        loss, parts, gn = _train_step(vae, opt, ema, list(vae.parameters()), rng, tc, step, warmup=20)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % tc.log_every == 0 or step == tc.steps:
            log.write(step, loss=loss.item(), grad_norm=float(gn), **parts)
        if step % tc.save_every == 0 or step == tc.steps:
            save_state(state_path, {"model": vae.state_dict(), "ema": ema.state_dict(),
                                    "opt": opt.state_dict(), "step": step, "cfg": cfg, "tc": tc})
    bar.close()
    return state_path


def _train_step(vae, opt, ema, params, rng, tc: "VAETrainConfig", step: int, warmup: int):
    """One AdamW step on fresh crops (warm-up + cosine LR, clipping 1.0, EMA): (loss, parts, |g|)."""
    x = sample_crops(rng, tc.batch, tc.crop, tc.frames)
    for g in opt.param_groups:
        g["lr"] = lr_at(step, tc.lr, warmup, tc.steps)
    loss, parts = vae_loss(vae, x, tc)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.update(vae, step)
    return loss, parts, gn


@torch.no_grad()
def latent_stats(vae, scenes, batch: int = 4) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the raw latent mean over whole clips (the VAEConfig mean/std)."""
    mus = []
    for i in range(0, len(scenes), batch):
        x = torch.stack([to_tensor(render(s)) for s in scenes[i:i + batch]])
        mu, _ = vae.encode_moments(x, chunked=False)
        mus.append(mu.transpose(0, 1).reshape(mu.shape[1], -1))  # [z, N]
    m = torch.cat(mus, 1)
    return m.mean(1).tolist(), m.std(1).tolist()


def finetune_decoder(vae, out_dir: Path, tc: VAETrainConfig) -> None:
    """Train only the decoder side (conv2 + decoder) with the encoder frozen.

    The latent space does not move, so latents already encoded for the DiT stay valid; used for
    a last phase on longer windows (9 frames = 3 latent frames) where colour is weighted more.
    """
    from wanmoe.vae.blocks import use_reference_kernels

    use_reference_kernels(vae, True)
    params = list(vae.decoder.parameters()) + list(vae.conv2.parameters())
    vae.encoder.requires_grad_(False)
    vae.conv1.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = EMA(vae, decay=0.99)
    rng = random.Random(tc.seed * 31 + 7)
    log = LossLog(out_dir / "vae_decoder_loss.jsonl")
    bar = progress(tc.steps, 0, "vae-decoder")
    for step in range(tc.steps):
        loss, parts, _ = _train_step(vae, opt, ema, params, rng, tc, step, warmup=10)
        bar.update(1)
        if (step + 1) % tc.log_every == 0:
            log.write(step + 1, loss=loss.item(), **parts)
    bar.close()
    vae.load_state_dict(ema.state_dict())
    vae.requires_grad_(True)
