"""Flow-matching training of the demo DiT experts on pre-encoded latents.

The training clips are rendered and encoded by the trained VAE once (`build_latents`), so DiT
steps touch only [16, 5, 8, 8] latents. Captions are re-drawn from the templates every time a
clip is used. "moe" mode alternates optimiser steps between the high-noise expert (σ >=
boundary) and the low-noise expert (σ < boundary); "dense" trains one DiT on all σ; both modes
share the text-encoder training and count every optimiser step of any expert as one step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from wanmoe.configs import OFFICIAL_NEGATIVE_PROMPT, ModelPreset
from wanmoe.demo.clips import Scene, caption, render, to_tensor, training_scenes
from wanmoe.demo.training.common import EMA, LossLog, load_state, lr_at, progress, save_state
from wanmoe.demo.training.flow import flow_loss, sample_sigmas, sigma_range
from wanmoe.demo.training.text import build_text_model, encode_batch

VAL_SIGMAS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class DiTTrainConfig:
    """Hyper-parameters of a DiT run (steps = total optimiser steps over all experts)."""

    steps: int = 6000
    batch: int = 16
    lr: float = 1.5e-3
    text_lr: float = 7.5e-4
    ema: float = 0.998
    drop_text: float = 0.1  # classifier-free guidance: caption replaced by "" or the negative prompt
    clip_grad: float = 1.0
    warmup: int = 100
    seed: int = 0
    log_every: int = 25
    save_every: int = 250


@torch.no_grad()
def build_latents(vae, scenes: list[Scene], batch: int = 8, desc: str = "encode") -> torch.Tensor:
    """Normalised latents [N, z, F, h, w] of the rendered scenes."""
    out = []
    bar = progress(len(scenes), 0, desc)
    for i in range(0, len(scenes), batch):
        x = torch.stack([to_tensor(render(s)) for s in scenes[i:i + batch]])
        out.append(vae.encode(x, chunked=False))
        bar.update(len(x))
    bar.close()
    return torch.cat(out)


def _captions(scenes: list[Scene], rng: random.Random, drop: float) -> list[str]:
    caps = []
    for s in scenes:
        if rng.random() < drop:
            caps.append("" if rng.random() < 0.5 else OFFICIAL_NEGATIVE_PROMPT)
        else:
            caps.append(caption(s.objects, s.background, rng))
    return caps


def _build(preset: ModelPreset, mode: str, seed: int) -> dict[str, torch.nn.Module]:
    from wanmoe.models.dit import WanDiT

    names = ["dense"] if mode == "dense" else ["high_noise", "low_noise"]
    models = {}
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        m = WanDiT(preset.dit)
        m.init_weights()
        models[name] = m
    return models


class DiTRun:
    """All trainable state of one run; `train()` resumes from `state_path` when it exists."""

    def __init__(self, preset: ModelPreset, tok, latents: torch.Tensor, scenes: list[Scene],
                 out_dir: Path, tc: DiTTrainConfig, mode: str = "moe"):
        self.preset, self.tok, self.latents, self.scenes, self.tc = preset, tok, latents, scenes, tc
        self.mode, self.out_dir = mode, out_dir
        self.experts = _build(preset, mode, tc.seed)
        self.text = build_text_model(preset.t5, tc.seed + 100)
        self.opts = {k: torch.optim.AdamW(m.parameters(), lr=tc.lr, weight_decay=0.01)
                     for k, m in self.experts.items()}
        self.text_opt = torch.optim.AdamW(self.text.parameters(), lr=tc.text_lr, weight_decay=0.01)
        self.emas = {k: EMA(m, tc.ema) for k, m in self.experts.items()}
        self.text_ema = EMA(self.text, tc.ema)
        self.step = 0
        self.state_path = out_dir / f"dit_{mode}_state.pt"

    def state(self) -> dict:
        return {"step": self.step, "text": self.text.state_dict(), "text_ema": self.text_ema.state_dict(),
                "text_opt": self.text_opt.state_dict(),
                "experts": {k: m.state_dict() for k, m in self.experts.items()},
                "emas": {k: e.state_dict() for k, e in self.emas.items()},
                "opts": {k: o.state_dict() for k, o in self.opts.items()}}

    def load(self, st: dict) -> None:
        self.step = st["step"]
        self.text.load_state_dict(st["text"])
        self.text_ema.load_state_dict(st["text_ema"])
        self.text_opt.load_state_dict(st["text_opt"])
        for k in self.experts:
            self.experts[k].load_state_dict(st["experts"][k])
            self.emas[k].load_state_dict(st["emas"][k])
            self.opts[k].load_state_dict(st["opts"][k])

    def train_step(self, rng: random.Random, gen: torch.Generator) -> tuple[str, float, float]:
        """One optimiser step of one expert (and of the text encoder)."""
        tc, names = self.tc, list(self.experts)
        name = names[self.step % len(names)]
        model, opt = self.experts[name], self.opts[name]
        idx = torch.randint(len(self.latents), (tc.batch,), generator=gen)
        x0 = self.latents[idx]
        caps = _captions([self.scenes[i] for i in idx.tolist()], rng, tc.drop_text)
        lo, hi = sigma_range(name, self.preset.boundary)
        sigma = sample_sigmas(tc.batch, self.preset.shift, lo, hi, gen)
        noise = torch.randn(x0.shape, generator=gen)
        for o, base in ((opt, tc.lr), (self.text_opt, tc.text_lr)):
            for g in o.param_groups:
                g["lr"] = lr_at(self.step, base, tc.warmup, tc.steps)
        loss = flow_loss(model, x0, sigma, noise, encode_batch(self.text, self.tok, caps))
        opt.zero_grad(set_to_none=True)
        self.text_opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(model.parameters()) + list(self.text.parameters())
        gn = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad)
        opt.step()
        self.text_opt.step()
        self.emas[name].update(model, self.step // len(names))
        self.text_ema.update(self.text, self.step)
        self.step += 1
        return name, loss.item(), float(gn)

    def train(self) -> None:
        st = load_state(self.state_path)
        rng = random.Random(self.tc.seed * 7)
        gen = torch.Generator().manual_seed(self.tc.seed * 7)
        if st is not None:
            self.load(st)
            rng.setstate(st["rng"])
            gen.set_state(st["gen"])
        log = LossLog(self.out_dir / f"dit_{self.mode}_loss.jsonl")
        bar = progress(self.tc.steps, self.step, f"dit-{self.mode}")
        while self.step < self.tc.steps:
            name, loss, gn = self.train_step(rng, gen)
            bar.update(1)
            bar.set_postfix(expert=name, loss=f"{loss:.4f}")
            if self.step % self.tc.log_every == 0:
                log.write(self.step, expert=name, loss=loss, grad_norm=gn)
            if self.step % self.tc.save_every == 0 or self.step == self.tc.steps:
                save_state(self.state_path, self.state() | {"rng": rng.getstate(),
                                                            "gen": gen.get_state()})
        bar.close()


@torch.no_grad()
def validation_loss(preset: ModelPreset, experts: dict, text, tok, latents: torch.Tensor,
                    scenes: list[Scene], seed: int = 0) -> dict[float, float]:
    """Flow-matching MSE per σ on held-out latents, each σ routed to the expert that owns it."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    ctx = encode_batch(text, tok, [caption(s.objects, s.background, rng) for s in scenes])
    out = {}
    for s in VAL_SIGMAS:
        noise = torch.randn(latents.shape, generator=gen)
        if "dense" in experts:
            model = experts["dense"]
        else:
            model = experts["high_noise" if s >= preset.boundary else "low_noise"]
        sigma = torch.full((len(latents),), s)
        out[s] = sum(flow_loss(model, latents[i:i + 16], sigma[i:i + 16], noise[i:i + 16],
                               ctx[i:i + 16]).item() * len(latents[i:i + 16])
                     for i in range(0, len(latents), 16)) / len(latents)
    return out


def training_set(n: int, seed: int = 0) -> list[Scene]:
    """The scenes the DiT is trained on."""
    return training_scenes(n, seed)
