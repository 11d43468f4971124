"""The demo model's training stages, each resumable, all under one work folder.

    vae       -> <work>/vae_state.pt, then <work>/vae_final.pt (EMA weights + latent mean/std)
    tokenizer -> <work>/tokenizer.json (caption vocabulary)
    latents   -> <work>/latents.pt (training clips and held-out validation clips, encoded once)
    dit       -> <work>/dit_<mode>_state.pt (experts, text encoder, EMAs, optimisers)
    export    -> a wanmoe-native folder (default: the package's demo assets)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from wanmoe.demo.clips import held_out_scenes, training_scenes
from wanmoe.demo.preset import demo_preset, demo_vae_config
from wanmoe.training.common import load_state, save_state
from wanmoe.training.dit_trainer import DiTRun, DiTTrainConfig, build_latents, validation_loss
from wanmoe.training.vae_trainer import VAETrainConfig, finetune_decoder, latent_stats, train_vae

N_VAL = 48  # held-out clips for the validation loss


def _timed(work: Path, stage: str, seconds: float) -> None:
    """Accumulate wall time per stage in <work>/timings.json (resumed runs add up)."""
    path = work / "timings.json"
    t = json.loads(path.read_text()) if path.exists() else {}
    t[stage] = round(t.get(stage, 0.0) + seconds, 1)
    path.write_text(json.dumps(t, indent=1) + "\n")


def stage_vae(work: Path, tc: VAETrainConfig, stats_clips: int = 96, decoder_steps: int = 250) -> Path:
    """Train the VAE, then store its EMA weights with per-channel latent statistics.

    Phases: 7/9 of the steps on 32x32 crops (batch 8, cheap), the rest on 64x64 crops (batch 4)
    so flat areas larger than the small crops (whole backgrounds) come out clean; then
    `decoder_steps` decoder-only steps on 9-frame 64x64 windows with a colour term.
    """
    from dataclasses import replace

    from wanmoe.vae import build_vae

    t0 = time.perf_counter()
    first = tc.steps * 7 // 9
    train_vae(demo_vae_config(), work, replace(tc, steps=first))
    state = train_vae(demo_vae_config(), work, replace(tc, batch=4, crop=64, lr=0.75 * tc.lr))
    vae = build_vae(demo_vae_config())
    vae.load_state_dict(load_state(state)["ema"])
    mean, std = latent_stats(vae, training_scenes(stats_clips, seed=7))
    vae = build_vae(demo_vae_config(tuple(mean), tuple(std)))
    vae.load_state_dict(load_state(state)["ema"])
    if decoder_steps:  # encoder frozen: the latent space (and these stats) stay as measured
        finetune_decoder(vae, work, replace(tc, steps=decoder_steps, batch=3, crop=64, frames=9,
                                            lr=0.5 * tc.lr, colour_weight=2.0))
    final = work / "vae_final.pt"
    save_state(final, {"model": vae.state_dict(), "mean": mean, "std": std})
    _timed(work, "vae", time.perf_counter() - t0)
    return final


def load_vae(work: Path):
    """The trained VAE (EMA weights) built with its own latent statistics."""
    from wanmoe.vae import build_vae

    st = load_state(work / "vae_final.pt")
    if st is None:
        raise FileNotFoundError(f"{work / 'vae_final.pt'} is missing; run `wanmoe train vae` first")
    vae = build_vae(demo_vae_config(tuple(st["mean"]), tuple(st["std"])))
    vae.load_state_dict(st["model"])
    return vae.eval()


def stage_tokenizer(work: Path, vocab_size: int) -> Path:
    from wanmoe.training.text import train_caption_tokenizer

    path = work / "tokenizer.json"
    if not path.exists():
        train_caption_tokenizer(vocab_size).save(str(path))
    return path


def load_tok(work: Path, text_len: int):
    from wanmoe.text.tokenizer import load_tokenizer

    return load_tokenizer(work / "tokenizer.json", text_len=text_len)


def stage_latents(work: Path, n_clips: int) -> Path:
    """Encode n training clips and N_VAL held-out clips once (skipped when already done)."""
    path = work / "latents.pt"
    st = load_state(path)
    if st is not None and st["n"] >= n_clips:
        return path
    t0 = time.perf_counter()
    vae = load_vae(work)
    with torch.no_grad():
        train = build_latents(vae, training_scenes(n_clips), desc="encode train")
        val = build_latents(vae, held_out_scenes(N_VAL, seed=999, num_objects=None), desc="encode val")
    save_state(path, {"n": n_clips, "train": train, "val": val})
    _timed(work, "latents", time.perf_counter() - t0)
    return path


def stage_dit(work: Path, mode: str, tc: DiTTrainConfig, sub: str = "") -> DiTRun:
    """Train (or resume) the experts of `mode` ("moe" or "dense") in work/sub."""
    lat = load_state(work / "latents.pt")
    if lat is None:
        raise FileNotFoundError(f"{work / 'latents.pt'} is missing; run the latents stage first")
    preset = demo_preset(dense=mode == "dense")
    tok = load_tok(work, preset.t5.text_len)
    out = work / sub if sub else work
    run = DiTRun(preset, tok, lat["train"], training_scenes(lat["n"]), out, tc, mode)
    t0 = time.perf_counter()
    run.train()
    _timed(work, f"dit_{mode}{'_' + sub if sub else ''}", time.perf_counter() - t0)
    return run


def ema_models(run: DiTRun) -> tuple[dict, torch.nn.Module]:
    """(expert name -> EMA DiT, EMA text encoder) of a finished run."""
    st = load_state(run.state_path)
    if st is not None:
        run.load(st)
    return {k: e.shadow for k, e in run.emas.items()}, run.text_ema.shadow


def val_table(work: Path, run: DiTRun) -> dict[float, float]:
    """Validation flow-matching loss per σ on the held-out latents (EMA weights)."""
    lat = load_state(work / "latents.pt")
    experts, text = ema_models(run)
    scenes = held_out_scenes(N_VAL, seed=999, num_objects=None)
    return validation_loss(run.preset, experts, text, run.tok, lat["val"], scenes)


def stage_export(work: Path, run: DiTRun, dest: Path) -> Path:
    """Write the EMA weights of a run plus the VAE and tokenizer as a wanmoe-native folder."""
    from wanmoe.training.export import write_folder

    st = load_state(work / "vae_final.pt")
    vae_cfg = demo_vae_config(tuple(st["mean"]), tuple(st["std"]))
    preset = demo_preset(vae=vae_cfg, dense=run.mode == "dense")
    experts, text = ema_models(run)
    return write_folder(dest, preset, {k: m.state_dict() for k, m in experts.items()},
                        text.state_dict(), st["model"], run.tok.tokenizer)
