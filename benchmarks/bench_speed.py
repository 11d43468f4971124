"""Speed features side by side, one process: what each costs or saves, with its quality column.

Two random DiT experts of the A14B structure (`--dim`, `--layers`), the T2V-A14B preset's
schedule (boundary 0.875, shift 12, guidance 4/3), a latent of `--size` and `--frames`; random
text contexts (no text encoder, no VAE: this times the denoise loop, where the time goes).
Every row is timed in the same process, in alternating rounds, median of `--runs`.

Rows:  official (UniPC, `--steps`, CFG: 2 forwards a step) is the baseline; batched CFG;
       --cache mag (published ratios; default and README thresholds) and --cache easy;
       --preset lightning (4 steps, guidance 1: 4 forwards; quality needs the distilled LoRA,
       so its column says n/a); LoRA rank 32 on every block linear, merged vs runtime (side
       branch; quality vs merged).
Quality: relative latent drift |x - x_ref| / |x_ref| against the exact twin of that row.
Run: `PYTHONPATH=. python benchmarks/bench_speed.py [--runs 3]`; writes a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from wanmoe.configs import T2V_A14B, DiTConfig
from wanmoe.models.dit import WanDiT
from wanmoe.pipeline import WanPipeline
from wanmoe.request import runtime_config
from wanmoe.runtime.config import LoRAMode
from wanmoe.sampling import PRESETS
from wanmoe.validate import settings_for


def _experts(cfg: DiTConfig) -> dict:
    out = {}
    for i, name in enumerate(("high_noise", "low_noise")):
        torch.manual_seed(10 + i)
        m = WanDiT(cfg)
        m.init_weights()
        with torch.no_grad():  # a non-zero head and modulation, so outputs depend on everything
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        out[name] = m.eval()
    return out


def _lora_sets(cfg: DiTConfig, experts: dict, rank: int):
    from wanmoe.lora.formats import load_lora

    sets = {}
    for i, (name, model) in enumerate(experts.items()):
        g = torch.Generator().manual_seed(100 + i)
        state = {}
        for mod_name, mod in model.named_modules():
            if model.meta.is_quantisable(mod_name):
                o, n = mod.weight.shape
                state[f"diffusion_model.{mod_name}.lora_down.weight"] = torch.randn(rank, n, generator=g) / n**0.5
                state[f"diffusion_model.{mod_name}.lora_up.weight"] = 0.05 * torch.randn(o, rank, generator=g) / rank**0.5
        keys = {k: tuple(p.shape) for k, p in model.named_parameters()}
        sets[name] = [(load_lora(state, keys, source=f"random-{name}"), 1.0)]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--size", default="256*256")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DiTConfig(dim=args.dim, ffn_dim=3 * args.dim, num_heads=args.dim // 128, num_layers=args.layers,
                    in_dim=16, out_dim=16, text_dim=args.dim, text_len=128)
    preset = replace(T2V_A14B, dit=cfg)
    experts = _experts(cfg)
    g = torch.Generator().manual_seed(0)
    cond, uncond = [torch.randn(20, cfg.text_dim, generator=g)], [torch.randn(60, cfg.text_dim, generator=g)]
    w, h = (int(v) for v in args.size.split("*"))
    noise = torch.randn(16, (args.frames - 1) // 4 + 1, h // 8, w // 8, generator=g)
    official = settings_for(preset, size=args.size, frames=args.frames, steps=args.steps, seed=0)
    lightning = settings_for(preset, size=args.size, frames=args.frames, seed=0, **PRESETS["lightning"])

    def pipe_with(**rt):
        return WanPipeline(preset, experts, None, None, runtime=runtime_config("cpu", **rt))

    rows = {  # name: (pipeline, request, sample kwargs, exact twin row or None)
        "official UniPC, CFG": (pipe_with(), official, {}, None),
        "batched CFG (B=2)": (pipe_with(batched_cfg=True), official, {}, "official UniPC, CFG"),
        "cache mag (0.04, K=2)": (pipe_with(cache="mag"), official, {}, "official UniPC, CFG"),
        "cache mag (0.06, K=2)": (pipe_with(cache="mag:0.06"), official, {}, "official UniPC, CFG"),
        "cache easy (0.05)": (pipe_with(cache="easy"), official, {}, "official UniPC, CFG"),
        "preset lightning (4 steps, g=1)": (pipe_with(), lightning, {}, None),
    }
    times = {name: [] for name in rows}
    latents, stats = {}, {}
    for _ in range(args.runs):
        for name, (pipe, req, kw, _) in rows.items():
            t0 = time.perf_counter()
            x, _ = pipe.sample(noise, cond, uncond, req, progress=False, **kw)
            times[name].append(time.perf_counter() - t0)
            latents[name], stats[name] = x, dict(pipe.cache_stats)
    # LoRA: merged (weights changed in place) vs runtime side branches, on copies of the experts
    import copy

    from wanmoe.lora.apply import apply_loras

    sets = _lora_sets(cfg, experts, rank=32)
    lora_rows = {}
    for mode in (LoRAMode.MERGE, LoRAMode.RUNTIME):
        ex = {n: copy.deepcopy(m) for n, m in experts.items()}
        for n, m in ex.items():
            apply_loras(m, sets[n], mode)
        lora_rows[f"LoRA r32 {mode.value}"] = WanPipeline(preset, ex, None, None, runtime=runtime_config("cpu"))
    for name in lora_rows:
        times[name] = []
    for _ in range(args.runs):
        for name, pipe in lora_rows.items():
            t0 = time.perf_counter()
            latents[name], _ = pipe.sample(noise, cond, uncond, official, progress=False)
            times[name].append(time.perf_counter() - t0)
    twins = {name: spec[3] for name, spec in rows.items()} | {"LoRA r32 merge": None,
                                                             "LoRA r32 runtime": "LoRA r32 merge"}
    base = statistics.median(times["official UniPC, CFG"])
    tokens = noise.shape[1] * noise.shape[2] * noise.shape[3] // 4
    print(f"# Speed features, denoise loop only\n\nHardware: {platform.machine()} CPU, "
          f"{args.threads} threads, torch {torch.__version__}. Model: two random A14B-structure experts "
          f"d{cfg.dim} x{cfg.num_layers} layers, {args.size}, "
          f"{args.frames} frames ({tokens} tokens), {args.steps} steps, median of {args.runs}.\n")
    print("| feature | forwards | s | speed-up vs official | quality: latent drift vs exact twin |")
    print("|---|---|---|---|---|")
    for name in times:
        t = statistics.median(times[name])
        twin = twins[name]
        drift = "exact twin" if twin is None else \
            f"{((latents[name] - latents[twin]).norm() / latents[twin].norm()).item():.1e} (vs {twin})"
        if name.startswith("preset lightning"):
            drift = "n/a (needs the distilled LoRA)"
        n_fw = stats.get(name, {})
        fw = f"{n_fw['forwards'] - n_fw['skipped']} of {n_fw['forwards']}" if n_fw else \
            ("4" if name.startswith("preset") else f"{2 * args.steps}")
        print(f"| {name} | {fw} | {t:.2f} | {base / t:.2f}x | {drift} |")


if __name__ == "__main__":
    main()
