"""The `wanmoe` command: `generate` here, `inspect` / `convert` / `train` from their modules.

User errors (`WanmoeError`) print `error: <message>` to stderr and exit with status 2, without a
stack trace. Optional subcommands are imported only when used, so a broken or missing optional
module cannot break `wanmoe generate`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from .errors import InputError, WanmoeError
from .runtime.attention import BACKENDS as ATTENTION_BACKENDS
from .runtime.config import LoRAMode, WeightMode
from .sampling import PRESETS, SOLVERS

# name -> (module providing register_cli(subparsers), one-line help shown in `wanmoe --help`)
OPTIONAL_COMMANDS = {
    "inspect": ("wanmoe.loading.inspect", "show what a checkpoint file or folder is (format, dims, dtypes)"),
    "convert": ("wanmoe.convert", "convert a checkpoint between layouts"),
    "train": ("wanmoe.demo.training.cli", "train the tiny demo model"),
    "plan": ("wanmoe.plan", "predict memory and speed of each weight format / offload mode on a GPU"),
    "serve": ("wanmoe.serve.cli", "HTTP API + web page with a persistent job queue"),
}


def add_checkpoint_args(p) -> None:
    """The model-file flags (`generate`, `serve`)."""
    src = p.add_argument_group("checkpoint (default: the built-in demo model)")
    src.add_argument("--ckpt-dir", help="official Wan2.2-T2V-A14B / TI2V-5B folder, diffusers folder "
                                        "or wanmoe folder")
    src.add_argument("--high", help="high-noise expert file (safetensors / GGUF), overrides the folder's")
    src.add_argument("--low", help="low-noise expert file, overrides the folder's")
    src.add_argument("--vae", help="VAE file (Wan2.1_VAE.pth, Wan2.2_VAE.pth, safetensors)")
    src.add_argument("--text-encoder", help="umT5 encoder file (models_t5_umt5-xxl-enc-bf16.pth, HF "
                                          "safetensors, umt5-xxl-encoder-Q8_0.gguf, ...)")
    src.add_argument("--tokenizer", help="tokenizer.json or folder (google/umt5-xxl)")


def add_lora_args(p) -> None:
    """The LoRA flags (`generate`, `serve`)."""
    lo = p.add_argument_group("LoRA (FILE or FILE:STRENGTH, repeatable; any common layout)")
    lo.add_argument("--lora", action="append", default=[], metavar="FILE[:S]",
                    help="a LoRA on every expert")
    lo.add_argument("--lora-high", action="append", default=[], metavar="FILE[:S]",
                    help="a LoRA on the high-noise expert (A14B)")
    lo.add_argument("--lora-low", action="append", default=[], metavar="FILE[:S]",
                    help="a LoRA on the low-noise expert (A14B)")
    lo.add_argument("--lora-mode", choices=[m.value for m in LoRAMode], default="merge",
                    help="merge into float weights at load (default; quantised layers get a side "
                         "branch) or runtime (a side branch on every layer)")


def add_runtime_args(p) -> None:
    """The runtime flags (`generate`, `serve`); `runtime_from_args` turns them into a config."""
    r = p.add_argument_group("runtime")
    r.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    r.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    r.add_argument("--weights", choices=[m.value for m in WeightMode if m is not WeightMode.DEFAULT],
                   help="DiT weight storage (default: as --dtype needs; keep = as stored, e.g. GGUF)")
    r.add_argument("--offload", nargs="?", const="expert", metavar="MODE",
                   help="expert = keep only the active expert on the GPU (bare --offload); "
                        "blocks[:N] = stream DiT blocks from host memory, N on the GPU (default 2); "
                        "none; auto (default: expert when all experts take more than half the GPU)")
    r.add_argument("--no-offload", dest="offload", action="store_const", const="none",
                   help="same as --offload none")
    r.add_argument("--attention", default="auto", choices=list(ATTENTION_BACKENDS),
                   help="attention backend (auto: on CUDA the fastest of fa3/fa2/cudnn/sdpa kernels, "
                        "timed once per shape and logged; on CPU torch SDPA; auto+sage: SageAttention "
                        "as a candidate too (approximate); reference: plain fp32 softmax)")
    r.add_argument("--fp8-matmul", default="dequant", choices=["dequant", "scaled", "auto"],
                   help="fp8 weights (--weights fp8, scaled-fp8 files): dequant = dequantise + matmul "
                        "(default); auto = torch._scaled_mm with per-token activation scales on GPUs "
                        "with fp8 tensor cores (compute capability >= 8.9), else dequant")
    r.add_argument("--t5-cpu", action="store_true", help="run the text encoder on the CPU")
    r.add_argument("--text-weights", choices=["fp8", "int8"],
                   help="quantise the umT5 linears per output channel while loading (default: as "
                        "stored; a GGUF encoder stays GGUF); docs/quantization.md")
    r.add_argument("--batched-cfg", action="store_true", default=None,
                   help="run the conditional and unconditional passes as one batch of 2 (default: "
                        "on CUDA when the memory model says it fits, separate passes on CPU)")
    r.add_argument("--no-batched-cfg", dest="batched_cfg", action="store_false",
                   help="always run the two passes one after another")
    r.add_argument("--vae-tile", metavar="H,W,OVERLAP",
                   help="decode in spatial tiles of HxW latent pixels overlapping by OVERLAP "
                        "(less VAE memory at 720P; e.g. 45,80,8); default: untiled")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile each DiT block (first forward compiles: minutes; needs a C "
                   "compiler on CPU); falls back to eager with one warning if compiling fails")
    r.add_argument("--text-kv-cache", choices=["auto", "on", "off"], default="auto",
                   help="keep the text embedding and every block's cross-attention keys/values "
                        "for the run instead of recomputing them each step (exact; A14B bf16: "
                        "0.85 GB per expert); auto = on when it fits (always on CPU), off with "
                        "--compile")
    r.add_argument("--per-token-time", action="store_true",
                   help="embed the timestep for every token like the official code (bit-exact to "
                   "it in bf16; costs an fp32 [L, 6, dim] tensor per sample, 9.3 GB at A14B 720P)")
    r.add_argument("--cache", default="off", metavar="off|easy[:T]|mag[:T[:K]]",
                   help="skip DiT forwards whose change is predicted small: easy (runtime-adaptive, "
                        "threshold 0.05) or mag (MagCache's published Wan2.2 ratios, threshold "
                        "0.04, at most K=2 skips in a row); off (default) is exact")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def runtime_from_args(args, device=None):
    """RuntimeConfig of the runtime flags; `device` overrides --device (serve: one per worker)."""
    from .request import runtime_config

    return runtime_config(args.device if device is None else device, args.dtype,
                          weights=args.weights, offload=args.offload,
                          text_device="cpu" if args.t5_cpu else None, attention=args.attention,
                          batched_cfg=args.batched_cfg, per_token_time=args.per_token_time,
                          lora_mode=args.lora_mode, cache=args.cache,
                          fp8_matmul=args.fp8_matmul, text_weights=args.text_weights,
                          compile=args.compile, text_kv_cache=args.text_kv_cache)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text -> MP4 video",
                       description="Generate a video from a text prompt. Unset values take the "
                                   "model's official defaults (see docs/cli.md).")
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the prompt (or use --prompt)")
    add_checkpoint_args(p)
    g = p.add_argument_group("generation (defaults: the model's official values)")
    g.add_argument("--prompt", help="the prompt")
    g.add_argument("--prompts", metavar="FILE",
                   help="a text file with one prompt per line: one video each, seeds SEED, "
                        "SEED+1, ..., outputs OUT_000.mp4, OUT_001.mp4, ... (pipelined over the "
                        "experts with --expert-parallel)")
    g.add_argument("--negative-prompt", help="default: the official negative prompt")
    g.add_argument("--size", help="WIDTH*HEIGHT (or WIDTHxHEIGHT), e.g. 1280*720")
    g.add_argument("--frames", type=int, help="pixel frames, 4n+1 (A14B 81, TI2V-5B 121)")
    g.add_argument("--steps", type=int, help="sampling steps (A14B 40, TI2V-5B 50)")
    g.add_argument("--shift", type=float, help="noise schedule shift (A14B 12, TI2V-5B 5)")
    g.add_argument("--guide-scale", help="CFG scale: one value for every expert or HIGH,LOW "
                                         "(A14B 4.0,3.0, TI2V-5B 5.0)")
    g.add_argument("--boundary", type=float, help="MoE switch as a timestep fraction (A14B 0.875)")
    g.add_argument("--boundary-snr", type=float, help="MoE switch as an SNR (0.875 = SNR 1/49)")
    g.add_argument("--solver", default=None, choices=list(SOLVERS),
                   help="default unipc (official); euler-lightning is the Lightning 4-step grid")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named set of sampling values; lightning = --solver euler-lightning "
                        "--steps 4 --shift 5 --guide-scale 1 (for the 4-step distilled LoRAs); "
                        "flags given explicitly win")
    g.add_argument("--cfg-steps", type=int, default=None, metavar="K",
                   help="phased guidance: real CFG on the first K steps only, guidance 1 (one "
                        "forward, no unconditional pass) after; default: CFG on every step")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random (printed)")
    add_lora_args(p)
    ck = p.add_argument_group("checkpoints (continue an interrupted run exactly)")
    ck.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                    help="save the latents and solver state every K steps (default 0 = never)")
    ck.add_argument("--checkpoint", metavar="FILE",
                    help="the checkpoint file (default: OUT with .ckpt appended); removed after "
                         "the video is written")
    ck.add_argument("--resume", metavar="FILE",
                    help="continue the run saved in FILE (same prompt and values; the seed is "
                         "read from FILE when --seed is not given); the result equals an "
                         "uninterrupted run exactly")
    add_runtime_args(p)
    from .parallel.launch import add_cli_flags

    add_cli_flags(p.add_argument_group("multi-GPU (launch with torchrun; docs/multi-gpu.md)"))
    o = p.add_argument_group("output")
    o.add_argument("--out", default="out.mp4", help="MP4 file to write (default: out.mp4)")
    o.add_argument("--save-latents", metavar="FILE.safetensors",
                   help="also save the final latents (key 'latents', float32 [C, F, h, w])")
    o.add_argument("--save-strip", metavar="FILE.png", help="also save 8 frames side by side as PNG")
    p.set_defaults(func=_cmd_generate)


def _prompts(args) -> list[str]:
    """The prompts of this run: one from PROMPT / --prompt, or every non-empty line of --prompts."""
    if not args.prompts:
        return [_prompt(args)]
    if args.prompt or args.prompt_text:
        raise InputError("give the prompt either as PROMPT / --prompt or in --prompts FILE, not both")
    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"--prompts {args.prompts!r} cannot be read ({e.strerror})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"--prompts {args.prompts!r} holds no prompt; write one prompt per line")
    return prompts


def _prompt(args) -> str:
    if args.prompt and args.prompt_text:
        raise InputError("the prompt was given twice (positional and --prompt); give it once")
    text = args.prompt or args.prompt_text
    if not text or not text.strip():
        raise InputError('no prompt given; use wanmoe generate "a red ball rolls" or --prompt')
    return text


def _check_out(path: str | None, suffix: str, flag: str) -> Path | None:
    """Output folders must exist (or be creatable) before hours of compute, not after."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise InputError(f"{flag} {path!r} must end in {suffix}")
    if p.is_dir():
        raise InputError(f"{flag} {path!r} is a folder; give a file name ending in {suffix}")
    parent = next((q for q in p.resolve().parents if q.exists()), None)
    if parent is None or not parent.is_dir():
        raise InputError(f"{flag} {path!r}: {parent} is not a folder, so the file cannot be written")
    return p


def _sampling_values(args) -> dict:
    """Sampling flags, with a --preset's values filling the ones not given."""
    from .request import sampling_values

    return sampling_values(args.preset, steps=args.steps, shift=args.shift,
                           guide_scale=args.guide_scale, solver=args.solver)


def _checkpoint_args(args, n_prompts: int) -> dict:
    """{"every", "path", "resume"} from --checkpoint-every / --checkpoint / --resume (checked)."""
    every = args.checkpoint_every
    if every < 0:
        raise InputError(f"--checkpoint-every {every} must be >= 0 (0 = no checkpoints)")
    if (every or args.resume) and n_prompts > 1:
        raise InputError("--checkpoint-every/--resume work with one prompt, not --prompts")
    resume = args.resume
    if resume is not None and not Path(resume).is_file():
        raise InputError(f"--resume {resume!r}: no such file")
    path = args.checkpoint
    if path is None and every:
        path = (args.out or "out.mp4") + ".ckpt"
    if path is not None and not every:
        raise InputError("--checkpoint FILE needs --checkpoint-every K (how often to save)")
    return {"every": every, "path": None if path is None else Path(path),
            "resume": None if resume is None else Path(resume)}


def _cmd_generate(args) -> int:
    from .parallel.setup import shutdown

    try:
        return _generate(args)
    finally:
        shutdown()  # the process group of a torchrun job, if one was started


def _generate(args) -> int:
    from . import pipeline as P
    from .parallel.launch import parallel_runtime
    from .parallel.setup import shared_seed
    from .request import lora_plan
    from .validate import parse_vae_tile, settings_for
    from .outputs import OutputPlan
    from .preflight import check_memory

    prompts = _prompts(args)
    ckpt = _checkpoint_args(args, len(prompts))
    rt = runtime_from_args(args)
    tiling = parse_vae_tile(args.vae_tile)
    out = _check_out(args.out, ".mp4", "--out")
    latents_path = _check_out(args.save_latents, ".safetensors", "--save-latents")
    strip_path = _check_out(args.save_strip, ".png", "--save-strip")
    outputs = OutputPlan({"--out": out, "--save-latents": latents_path, "--save-strip": strip_path})
    outputs.probe()  # each file can be created; no folder is made before the run succeeds
    if getattr(args, "interrupts", None) is not None:
        args.interrupts.add_cleanup(outputs.cleanup)
    spec = P.resolve(args.ckpt_dir, high=args.high, low=args.low, vae=args.vae,
                     text_encoder=args.text_encoder, tokenizer=args.tokenizer)  # headers only
    rt, plan = parallel_runtime(rt, spec.preset.dit.num_heads, len(spec.preset.experts),
                                ulysses=args.ulysses, cfg=args.cfg_parallel, fsdp=args.fsdp,
                                expert=args.expert_parallel)
    main = plan is None or plan.is_main  # rank 0 writes outputs and shows progress
    seed = args.seed if plan is None else shared_seed(args.seed, plan, rt.device)
    if ckpt["resume"] is not None and args.seed == -1:
        from .sampling.checkpoint import saved_seed

        seed = saved_seed(ckpt["resume"])
    settings = settings_for(spec.preset, size=args.size, frames=args.frames,
                            boundary=args.boundary, boundary_snr=args.boundary_snr,
                            seed=seed, cfg_steps=args.cfg_steps, **_sampling_values(args))
    check_memory(spec.preset, settings.width, settings.height, settings.frames, rt.device, rt.dtype,
                 rt.batched_cfg)
    loras = lora_plan(spec.preset, args.lora, args.lora_high, args.lora_low)
    if rt.device.type == "cuda":  # refuse what the memory model says cannot fit (docs/memory.md)
        import torch

        from .plan import memory_preflight

        memory_preflight(spec.preset, rt, settings, torch.cuda.get_device_properties(rt.device).total_memory,
                         None if tiling is None else (tiling.tile_latent_h, tiling.tile_latent_w,
                                                       tiling.overlap_latent),
                         spec.experts.values())
    if main:
        print(f"model: {spec.preset.name} ({spec.layout}) | size {settings.width}*{settings.height} | "
              f"{settings.frames} frames | {settings.steps} steps | solver {settings.solver} | "
              f"seed {settings.seed}" + (f" | {plan.world_size} processes" if plan else ""),
              file=sys.stderr)
        if spec.preset.name.startswith("demo"):  # say which prompt words the demo never saw
            from .demo.vocabulary import unknown_words_note

            note = unknown_words_note(prompts)
            if note:
                print(note, file=sys.stderr)
    pipe = P.load_pipeline(spec=spec, runtime=rt, loras=loras)
    if len(prompts) > 1 or (plan is not None and plan.expert):
        from .parallel.expert import generate_many

        return generate_many(pipe, prompts, settings, args.negative_prompt, plan=plan, out=out,
                             latents_path=latents_path, tiling=tiling, progress=not args.quiet)
    if ckpt["every"] and main:
        print(f"checkpoint: every {ckpt['every']} steps to {ckpt['path']} "
              f"(continue an interrupted run with --resume {ckpt['path']})", file=sys.stderr)
    result = pipe.generate(prompts[0], args.negative_prompt, settings=settings,
                           progress=not args.quiet and main, vae_tiling=tiling, decode=main,
                           checkpoint=ckpt["path"], checkpoint_every=ckpt["every"],
                           resume=ckpt["resume"])
    if not main:
        return 0
    t0 = time.perf_counter()
    from .video import save_latents, save_png_strip, write_mp4

    writers = {"--out": lambda p: write_mp4(p, result.frames, result.fps)}
    if latents_path is not None:
        writers["--save-latents"] = lambda p: save_latents(p, result.latents)
    if strip_path is not None:
        writers["--save-strip"] = lambda p: save_png_strip(result.frames, p)
    outputs.write(writers)  # all files appear together, or none
    for used in {ckpt["path"], ckpt["resume"]} - {None}:
        used.unlink(missing_ok=True)  # the video exists: the checkpoint has served
    timings = {"load": pipe.load_seconds, **{k: v for k, v in result.timings.items() if k != "total"},
               "write": time.perf_counter() - t0}
    timings["total"] = sum(timings.values())
    f, h, w, _ = result.frames.shape
    print(f"seed: {result.seed}")
    print(f"wrote {out} ({f} frames, {w}x{h}, {result.fps} fps)")
    print("time per stage: " + " | ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    if result.cache_stats:
        c = result.cache_stats
        print(f"cache: skipped {c['skipped']} of {c['forwards']} DiT forwards")
    kind = "GPU max allocated" if rt.device.type == "cuda" else "CPU peak RSS"
    print(f"peak memory: {P.describe_memory(result.peak_memory_bytes)} ({kind})")
    return 0


def _add_optional(sub, name: str, selected: str | None) -> None:
    """Register an optional subcommand; import its module only when that command is run."""
    module, help_text = OPTIONAL_COMMANDS[name]
    if selected == name:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            _add_unavailable(sub, name, help_text, f"{module} could not be imported ({e})")
            return
        mod.register_cli(sub)
        return
    _add_unavailable(sub, name, help_text, None)


def _add_unavailable(sub, name: str, help_text: str, reason: str | None) -> None:
    p = sub.add_parser(name, help=help_text, add_help=reason is None)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(_args) -> int:
        raise WanmoeError(f"the '{name}' command is not available: {reason}")

    p.set_defaults(func=fail)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanmoe", description="Wan2.2 text-to-video engine "
                                     "(T2V-A14B MoE, TI2V-5B, and a built-in tiny demo model)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    for name in OPTIONAL_COMMANDS:
        _add_optional(sub, name, selected)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from .interrupt import InterruptGuard

    try:
        with InterruptGuard() as args.interrupts:
            return int(args.func(args) or 0)
    except WanmoeError as e:
        from .parallel.plan import env_rank

        if env_rank() == 0:  # in a torchrun job every rank fails alike: say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(argv: list[str] | None = None) -> None:
    """Program entry (`wanmoe`, `python -m wanmoe`): `main()`, then exit. An interrupted run
    skips the interpreter's teardown, which with torch loaded can take seconds on a busy machine
    (temp files are already gone by then), so Ctrl-C ends the process at once."""
    code = main(argv)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
