"""`wanmoe train {vae,decoder,latents,dit,all,ablation}`: retrain the built-in demo model from scratch.

Every stage is resumable: re-running the same command continues from the last saved state in
the work folder. `all` runs vae (+ decoder) -> tokenizer + latents -> dit (two experts) -> export.
`ablation` trains (or reuses) the two-expert run and a dense run with the same optimiser steps
in the same work folder, so `dit --mode moe` and `dit --mode dense` may run side by side first.
"""

from __future__ import annotations

import json
from pathlib import Path

from wanmoe.errors import InputError


def _common(p) -> None:
    p.add_argument("--work", default="demo_train", help="work folder for states and logs "
                   "(default ./demo_train)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared CPU, 2 threads stall on barriers)")
    p.add_argument("--seed", type=int, default=0)


def _dit_args(p) -> None:
    p.add_argument("--dit-steps", type=int, default=6000, help="total optimiser steps, all experts")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clips", type=int, default=2000, help="training clips to encode")
    p.add_argument("--mode", choices=("moe", "dense"), default="moe")
    p.add_argument("--patch", type=int, choices=(1, 2), default=2,
                   help="DiT spatial patch: 2 (Wan2.2's, 4x4 tokens a latent frame) or 1 (8x8)")


def register_cli(subparsers) -> None:
    """Add `train` with its stages to the `wanmoe` parser."""
    p = subparsers.add_parser("train", help="train the tiny demo model", description=__doc__)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    v = stages.add_parser("vae", help="train the demo VAE and measure its latent statistics")
    _common(v)
    v.add_argument("--vae-steps", type=int, default=2000)
    v.add_argument("--decoder-steps", type=int, default=500,
                   help="decoder-only fine-tune steps after the VAE (0: leave it to `train decoder`)")
    de = stages.add_parser("decoder", help="decoder-only VAE fine-tune (needs `train vae`; "
                           "may run side by side with `train dit`)")
    _common(de)
    de.add_argument("--decoder-steps", type=int, default=500)
    la = stages.add_parser("latents", help="train the caption tokenizer and encode the training "
                           "clips with the trained VAE (needs `train vae`)")
    _common(la)
    la.add_argument("--clips", type=int, default=2000, help="training clips to encode")
    d = stages.add_parser("dit", help="train the DiT expert(s) (needs `train vae`)")
    _common(d)
    _dit_args(d)
    d.add_argument("--export", default=None, help="write the model folder here when done")
    a = stages.add_parser("all", help="everything from scratch, then export")
    _common(a)
    _dit_args(a)
    a.add_argument("--vae-steps", type=int, default=2000)
    a.add_argument("--decoder-steps", type=int, default=500)
    a.add_argument("--export", default=None,
                   help="model folder to write (default: the package's demo assets)")
    b = stages.add_parser("ablation", help="two experts vs one dense DiT, same optimiser steps")
    _common(b)
    _dit_args(b)
    for q in (v, de, la, d, a, b):
        q.set_defaults(func=run)


def _check(args) -> None:
    for name in ("threads", "dit_steps", "batch", "clips", "vae_steps"):
        v = getattr(args, name, 1)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} is {v}; it must be >= 1")
    if getattr(args, "decoder_steps", 0) < 0:
        raise InputError(f"--decoder-steps is {args.decoder_steps}; it must be >= 0")


def run(args) -> int:
    """Run the selected stage(s)."""
    from wanmoe.demo.training import demo_run as D
    from wanmoe.demo.training.common import set_threads
    from wanmoe.demo.training.dit_trainer import DiTTrainConfig
    from wanmoe.demo.training.vae_trainer import VAETrainConfig

    _check(args)
    set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("vae", "all"):
        D.stage_vae(work, VAETrainConfig(steps=args.vae_steps, seed=args.seed),
                    decoder_steps=args.decoder_steps)
    if args.stage == "decoder":
        D.stage_decoder(work, VAETrainConfig(seed=args.seed), args.decoder_steps)
    if args.stage in ("vae", "decoder"):
        return 0
    from wanmoe.demo.preset import DEMO

    D.stage_tokenizer(work, DEMO.t5.vocab_size)
    D.stage_latents(work, args.clips)
    if args.stage == "latents":
        return 0
    tc = DiTTrainConfig(steps=args.dit_steps, batch=args.batch, seed=args.seed)
    if args.stage == "ablation":
        return _ablation(D, work, tc, args.patch)
    run_ = D.stage_dit(work, args.mode, tc, patch=args.patch)
    print("validation loss by sigma:", json.dumps(D.val_table(work, run_)))
    dest = args.export
    if dest is None and args.stage == "all":
        dest = Path(__file__).resolve().parents[1] / "demo" / "assets"
    if dest is not None:
        D.stage_export(work, run_, Path(dest))
        print(f"wrote {dest}")
    return 0


def _ablation(D, work: Path, tc, patch: int = 2) -> int:
    """Train (or reuse, when already trained with these settings) the two-expert and the dense
    run in the work folder, export both and write their validation losses by σ."""
    results = {}
    for mode in ("moe", "dense"):
        r = D.stage_dit(work, mode, tc, patch=patch)
        D.stage_export(work, r, work / f"ablation_{mode}")
        results[mode] = D.val_table(work, r)
    (work / "ablation_val.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0
