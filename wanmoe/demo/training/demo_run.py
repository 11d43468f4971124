"""The demo model's training stages, each resumable, all under one work folder.

    vae       -> <work>/vae_state.pt, then <work>/vae_base.pt (EMA weights + latent mean/std)
    decoder   -> <work>/vae_final.pt (decoder-only fine-tune; encoder and latent space unchanged)
    tokenizer -> <work>/tokenizer.json (caption vocabulary)
    latents   -> <work>/latents.pt (training clips and held-out validation clips, encoded once)
    dit       -> <work>/dit_<mode>_state.pt (experts, text encoder, EMAs, optimisers)
    export    -> a wanmoe-native folder (default: the package's demo assets)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from wanmoe.demo.clips import held_out_scenes, training_scenes
from wanmoe.demo.preset import demo_preset, demo_vae_config
from wanmoe.demo.training.common import load_state, save_state
from wanmoe.demo.training.dit_trainer import DiTRun, DiTTrainConfig, build_latents, validation_loss
from wanmoe.demo.training.vae_trainer import VAETrainConfig, finetune_decoder, latent_stats, train_vae

N_VAL = 48  # held-out clips for the validation loss


def _timed(work: Path, stage: str, seconds: float) -> None:
    """Accumulate wall time per stage in <work>/timings.json (resumed runs add up)."""
    path = work / "timings.json"
    t = json.loads(path.read_text()) if path.exists() else {}
    t[stage] = round(t.get(stage, 0.0) + seconds, 1)
    path.write_text(json.dumps(t, indent=1) + "\n")


def stage_vae(work: Path, tc: VAETrainConfig, stats_clips: int = 96, decoder_steps: int = 500) -> Path:
    """Train the VAE, store its EMA weights with per-channel latent statistics
    (`vae_base.pt`), then run `stage_decoder` (`vae_final.pt`) unless decoder_steps is 0.

    Phases: 3/10 of the steps on 9-frame 64x64 crops (batch 4), the rest on whole 17-frame
    64x64 windows (batch 2), so every latent frame the demo decodes (5) is seen in training.
    """
    from dataclasses import replace

    from wanmoe.vae import build_vae

    base = work / "vae_base.pt"
    if load_state(base) is None:
        t0 = time.perf_counter()
        first = tc.steps * 3 // 10
        train_vae(demo_vae_config(), work, replace(tc, steps=first))
        state = train_vae(demo_vae_config(), work, replace(tc, batch=2, frames=17, lr=0.75 * tc.lr))
        vae = build_vae(demo_vae_config())
        vae.load_state_dict(load_state(state)["ema"])
        mean, std = latent_stats(vae, training_scenes(stats_clips, seed=7))
        save_state(base, {"model": vae.state_dict(), "mean": mean, "std": std})
        _timed(work, "vae", time.perf_counter() - t0)
    return stage_decoder(work, tc, decoder_steps) if decoder_steps else base


def stage_decoder(work: Path, tc: VAETrainConfig, steps: int = 500) -> Path:
    """Decoder-only fine-tune of `vae_base.pt` into `vae_final.pt` (skipped when it exists).

    The encoder is frozen, so the latent space, its statistics and the DiT's training latents
    do not change: this stage may run side by side with DiT training. 17-frame 64x64 windows,
    a stronger colour term and a little latent noise (a decoder that tolerates imperfect DiT
    latents), at a quarter of the VAE learning rate.
    """
    from dataclasses import replace

    final = work / "vae_final.pt"
    if load_state(final) is not None:
        return final
    t0 = time.perf_counter()
    st = _vae_state(work, "vae_base.pt")
    vae = _vae_from_state(st)
    if steps:
        finetune_decoder(vae, work, replace(tc, steps=steps, batch=2, frames=17, lr=0.25 * tc.lr,
                                            colour_weight=3.0, latent_noise=0.02))
    save_state(final, {"model": vae.state_dict(), "mean": st["mean"], "std": st["std"]})
    _timed(work, "vae_decoder", time.perf_counter() - t0)
    return final


def _vae_state(work: Path, name: str) -> dict:
    st = load_state(work / name)
    if st is None:
        raise FileNotFoundError(f"{work / name} is missing; run `wanmoe train vae` first")
    return st


def _vae_from_state(st: dict):
    """The VAE of a stored {model, mean, std} state, built with its own latent statistics."""
    from wanmoe.vae import build_vae

    vae = build_vae(demo_vae_config(tuple(st["mean"]), tuple(st["std"])))
    vae.load_state_dict(st["model"])
    return vae.eval()


def load_vae(work: Path, name: str = "vae_final.pt"):
    """The trained VAE (EMA weights) built with its own latent statistics."""
    return _vae_from_state(_vae_state(work, name))


def stage_tokenizer(work: Path, vocab_size: int) -> Path:
    from wanmoe.demo.training.text import train_caption_tokenizer

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
    vae = load_vae(work, "vae_base.pt")  # only the encoder is used: frozen after stage_vae
    with torch.no_grad():
        train = build_latents(vae, training_scenes(n_clips), desc="encode train")
        val = build_latents(vae, held_out_scenes(N_VAL, seed=999, num_objects=None), desc="encode val")
    save_state(path, {"n": n_clips, "train": train, "val": val})
    _timed(work, "latents", time.perf_counter() - t0)
    return path


def stage_dit(work: Path, mode: str, tc: DiTTrainConfig, sub: str = "", patch: int = 2) -> DiTRun:
    """Train (or resume) the experts of `mode` ("moe" or "dense") in work/sub."""
    lat = load_state(work / "latents.pt")
    if lat is None:
        raise FileNotFoundError(f"{work / 'latents.pt'} is missing; run the latents stage first")
    preset = demo_preset(dense=mode == "dense", patch=patch)
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
    from wanmoe.demo.training.export import write_folder

    st = _vae_state(work, "vae_final.pt")
    preset = dataclasses.replace(run.preset, vae=demo_vae_config(tuple(st["mean"]), tuple(st["std"])))
    experts, text = ema_models(run)
    return write_folder(dest, preset, {k: m.state_dict() for k, m in experts.items()},
                        text.state_dict(), st["model"], run.tok.tokenizer)
