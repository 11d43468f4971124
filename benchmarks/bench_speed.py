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

`--vs-diffusers`: instead of the rows above, the denoise loop of `WanPipeline.sample` against
diffusers' `WanPipeline` on the same two experts (shared tensors through the key map), the same
noise, contexts (zero-padded to text_len for diffusers, as our DiT pads inside) and solver (ours,
through a scheduler adapter), fp32, alternating rounds; prints the ratio ours / diffusers
(issue 13 target: <= 0.9). `--medium` sets the issue's config: two d512 x 4-layer experts,
256*256, 17 frames, 8 steps. `--compile` adds a row with `torch.compile` per block.
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
from wanmoe.testing.references import SolverScheduler
from wanmoe.validate import settings_for




def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def vs_diffusers(preset, experts: dict, noise, cond, uncond, request, args) -> None:
    """Denoise loop: ours vs diffusers' WanPipeline, alternating rounds; prints ratios."""
    import diffusers
    from bench_dit import diffusers_twin

    cfg = preset.dit
    high, low = (diffusers_twin(experts[n], torch.float32, "cpu") for n in ("high_noise", "low_noise"))
    ref = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                scheduler=SolverScheduler(request.solver, request.shift),
                                transformer=high, transformer_2=low, boundary_ratio=preset.boundary)
    ref.set_progress_bar_config(disable=True)

    def pad(c):
        return torch.cat([c, c.new_zeros(cfg.text_len - c.shape[0], c.shape[1])])[None]

    def run_ref():
        with torch.no_grad():
            return ref(prompt_embeds=pad(cond[0]), negative_prompt_embeds=pad(uncond[0]),
                       latents=noise[None].clone(), height=request.height, width=request.width,
                       num_frames=request.frames, num_inference_steps=request.steps,
                       guidance_scale=request.guide_scale[0],
                       guidance_scale_2=request.guide_scale[-1],
                       output_type="latent", return_dict=False)[0][0]

    rows = {"diffusers WanPipeline": run_ref}
    pipes = {"wanmoe": WanPipeline(preset, experts, None, None, runtime=runtime_config("cpu"))}
    if args.text_kv_off:  # the same loop without the per-run text K/V cache (runtime.text_kv)
        pipes["wanmoe text-kv off"] = WanPipeline(preset, experts, None, None,
                                                  runtime=runtime_config("cpu", text_kv_cache="off"))
    if args.compile:
        import copy  # own copies: compiling patches the blocks of the experts it is given

        pipes["wanmoe --compile"] = WanPipeline(preset, {n: copy.deepcopy(m) for n, m in experts.items()},
                                                None, None, runtime=runtime_config("cpu", compile=True))
    for name, pipe in pipes.items():
        rows[name] = (lambda p: lambda: p.sample(noise, cond, uncond, request, progress=False)[0])(pipe)
    times = {name: [] for name in rows}
    cpu = {name: [] for name in rows}  # process CPU time: less sensitive to other jobs' load
    out = {}
    for name, fn in rows.items():  # warm-up (compile happens here)
        t0 = time.perf_counter()
        out[name] = fn()
        print(f"warm-up {name}: {time.perf_counter() - t0:.2f} s", flush=True)
    for r in range(args.runs):
        for name, fn in (rows.items() if r % 2 == 0 else reversed(rows.items())):
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = statistics.median(times["diffusers WanPipeline"])
    base_cpu = statistics.median(cpu["diffusers WanPipeline"])
    tokens = noise.shape[1] * noise.shape[2] * noise.shape[3] // 4
    print(f"\n# Denoise loop vs diffusers\n\nHardware: {_cpu_name()} ({platform.machine()}), "
          f"{args.threads} threads, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}. Two random experts d{cfg.dim} x{cfg.num_layers} layers, "
          f"{args.size}, {args.frames} frames ({tokens} tokens), {args.steps} steps, CFG (2 forwards a "
          f"step), fp32, median of {args.runs} alternating rounds.\n")
    print("| pipeline | wall s (median) | wall, all rounds | CPU s (median) | ours / diffusers (wall) "
          "| ours / diffusers (CPU) | max rel diff vs diffusers |")
    print("|---|---|---|---|---|---|---|")
    ref_x = out["diffusers WanPipeline"]
    for name, ts in times.items():
        t, c = statistics.median(ts), statistics.median(cpu[name])
        diff = (out[name] - ref_x).abs().max() / ref_x.abs().max()
        print(f"| {name} | {t:.2f} | {' '.join(f'{v:.2f}' for v in ts)} | {c:.2f} | {t / base:.3f}x "
              f"| {c / base_cpu:.3f}x | {diff:.1e} |")
    ratio = statistics.median(times["wanmoe"]) / base
    ratio_cpu = statistics.median(cpu["wanmoe"]) / base_cpu
    print(f"\ndenoise ratio (wanmoe / diffusers): {ratio:.3f} wall, {ratio_cpu:.3f} CPU time")


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
    ap.add_argument("--vs-diffusers", action="store_true",
                    help="time the denoise loop against diffusers' WanPipeline (needs diffusers)")
    ap.add_argument("--medium", action="store_true",
                    help="the issue-13 config: d512 x4 layers, 256*256, 17 frames, 8 steps")
    ap.add_argument("--compile", action="store_true", help="--vs-diffusers: add a --compile row")
    ap.add_argument("--text-kv-off", action="store_true",
                    help="--vs-diffusers: add a row with the per-run text K/V cache off")
    args = ap.parse_args()
    if args.medium:
        args.dim, args.layers, args.size, args.frames, args.steps = 512, 4, "256*256", 17, 8
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
    if args.vs_diffusers:
        return vs_diffusers(preset, experts, noise, cond, uncond, official, args)
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
