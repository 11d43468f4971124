"""Fine-tune the shipped demo model on clips that include the light backgrounds (run 4).

    python benchmarks/demo_light_finetune.py --work /tmp/vocab_ft/w \
        [--decoder-steps 400] [--steps 5000] [--every 500] [--lr 5e-4]

Adds `clips.LIGHT_BACKGROUNDS` to `clips.BACKGROUNDS` in this process, seeds the work folder
from the package's demo assets (VAE + latent statistics, tokenizer), then: decoder-only VAE
fine-tune (encoder frozen, so the latent space stays the shipped DiT's) -> 2000 training + 48
validation latents -> both experts and the umT5 encoder continued from the shipped EMA weights
(fresh AdamW, warm-up 100, cosine to 10 %), exporting a model folder `snap_<step>` every
--every steps. Resumable (the state is saved every 250 steps; re-running with a larger --steps
re-lays the cosine over the new total). 1 torch thread. Score snapshots with
`python -m wanmoe.demo.evaluate --light-backgrounds --checkpoint <work>/snap_<step>
--prompt-seed 777` (validation prompts; the test set is the default seed); results:
benchmarks/results/demo_training.md, run 4. Run 5 resumed run 4's state with a new schedule:
`--steps 7000 --lr 1.5e-4 --restart --every 500 --tag r5` (that leg ran without the 200-step
warm-up), `--steps 13000 --lr 3e-4 --restart --every 1000 --tag r5`, then `--steps 17000 --lr
2e-4 --restart --every 1000 --tag r5`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch


def _seed_work(work: Path, assets: Path) -> None:
    """vae_base.pt (= shipped VAE with its latent statistics) and tokenizer.json from assets."""
    from safetensors.torch import load_file

    from wanmoe.demo.training.common import save_state

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "vae_base.pt").exists():
        meta = json.loads((assets / "wanmoe.json").read_text())["preset"]["vae"]
        save_state(work / "vae_base.pt", {"model": load_file(str(assets / "vae.safetensors")),
                                          "mean": meta["mean"], "std": meta["std"]})
    if not (work / "tokenizer.json").exists():  # same ids as the shipped umT5 embedding
        (work / "tokenizer.json").write_text((assets / "tokenizer.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--decoder-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=5000, help="DiT optimiser steps, both experts")
    ap.add_argument("--every", type=int, default=500, help="export a snapshot every N steps")
    ap.add_argument("--lr", type=float, default=5e-4, help="DiT LR (umT5: half of it)")
    ap.add_argument("--restart", action="store_true",
                    help="resuming: keep the optimiser state but lay a new schedule from the "
                    "saved step to --steps (200-step warm-up to --lr, cosine to 10 %%; run 5)")
    ap.add_argument("--tag", default="snap", help="snapshot folder prefix (run 5: r5)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from safetensors.torch import load_file

    from wanmoe.demo import clips
    from wanmoe.demo.preset import demo_preset, demo_vae_config
    from wanmoe.demo.training import demo_run as D
    from wanmoe.demo.training.common import LossLog, load_state, save_state
    from wanmoe.demo.training.dit_trainer import DiTRun, DiTTrainConfig
    from wanmoe.demo.training.export import write_folder
    from wanmoe.demo.training.vae_trainer import VAETrainConfig
    from wanmoe.pipeline import DEMO_DIR

    clips.BACKGROUNDS.update(clips.LIGHT_BACKGROUNDS)
    work = Path(args.work)
    _seed_work(work, DEMO_DIR)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    t0 = time.perf_counter()
    D.stage_decoder(work, VAETrainConfig(seed=3), args.decoder_steps)  # skipped when done
    log(f"decoder: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    D.stage_latents(work, 2000)  # encoder of vae_base.pt = the shipped encoder
    log(f"latents: {time.perf_counter() - t0:.0f} s")

    tc = DiTTrainConfig(steps=args.steps, lr=args.lr, text_lr=args.lr / 2, warmup=100, seed=5)
    preset = demo_preset()
    tok = D.load_tok(work, preset.t5.text_len)
    lat = load_state(work / "latents.pt")
    run = DiTRun(preset, tok, lat["train"], clips.training_scenes(lat["n"]), work, tc, "moe")
    st = load_state(run.state_path)
    rng, gen = random.Random(tc.seed * 7), torch.Generator().manual_seed(tc.seed * 7)
    if st is not None:
        run.load(st)
        rng.setstate(st["rng"])
        gen.set_state(st["gen"])
        if args.restart:  # the trainer's schedule reads this module-level function
            import math

            from wanmoe.demo.training import dit_trainer

            start, warm = run.step, 200

            def lr_at(step: int, base: float, _warmup: int, total: int) -> float:
                if step - start < warm:
                    return base * (step - start + 1) / warm
                u = min(1.0, (step - start - warm) / max(1, total - start - warm))
                return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * u)))

            dit_trainer.lr_at = lr_at
    else:  # raw and EMA weights start at the shipped (EMA) weights
        for k in run.experts:
            sd = load_file(str(DEMO_DIR / f"{k}.safetensors"))
            run.experts[k].load_state_dict(sd)
            run.emas[k].load_state_dict(sd)
        sd = load_file(str(DEMO_DIR / "text_encoder.safetensors"))
        run.text.load_state_dict(sd)
        run.text_ema.load_state_dict(sd)
    vae = load_state(work / "vae_final.pt")
    out_preset = dataclasses.replace(
        preset, vae=demo_vae_config(tuple(vae["mean"]), tuple(vae["std"])))

    def export(dest: Path) -> None:
        write_folder(dest, out_preset, {k: e.shadow.state_dict() for k, e in run.emas.items()},
                     run.text_ema.shadow.state_dict(), vae["model"], tok.tokenizer)

    if not (work / "snap_0").exists():
        export(work / "snap_0")  # shipped DiT + fine-tuned decoder
    losses = LossLog(work / "dit_moe_loss.jsonl")
    t0, s0 = time.perf_counter(), run.step
    while run.step < tc.steps:
        name, loss, gn = run.train_step(rng, gen)
        if run.step % 25 == 0:
            losses.write(run.step, expert=name, loss=loss, grad_norm=gn)
        if run.step % 250 == 0 or run.step == tc.steps:
            save_state(run.state_path,
                       run.state() | {"rng": rng.getstate(), "gen": gen.get_state()})
        if run.step % args.every == 0 or run.step == tc.steps:
            export(work / f"{args.tag}_{run.step}")
            dt = time.perf_counter() - t0
            log(f"step {run.step}: {dt:.0f} s, {dt / (run.step - s0):.3f} s/step; "
                f"{args.tag}_{run.step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
