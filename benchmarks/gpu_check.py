"""One command for a lent GPU (H100/H200): everything worth knowing in under ~8 minutes.

    PYTHONPATH=. python benchmarks/gpu_check.py            # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke    # the same code path on CPU, tiny

1. Hardware: name, compute capability, memory, torch/CUDA versions.
2. DiT forward at real A14B width (dim 5120, 40 heads, ffn 13824), random weights in the bf16
   storage layout, at 480P (32,760 tokens) and 720P (75,600 tokens), bf16 and fp8 weights
   (`FP8Linear` with `torch._scaled_mm` where the GPU has fp8 tensor cores). Only `--blocks`
   blocks (default 2) are built; one 40-layer forward is estimated as
   t(non-block parts) + 40 x t(block), with t(block) = (t(B blocks) - t(0 blocks)) / B measured
   on the same inputs (the 40 blocks are identical in shape, so this is exact up to caching
   effects). TFLOP/s from the analytic FLOPs of benchmarks/bench_dit.py, and the share of the
   dense bf16 peak of the device (table below; unknown devices: no percentage).
3. Attention alone, each backend of `runtime.attention_tune.REGISTRY` the device can run (fa3,
   fa2, cudnn, sdpa-flash, sdpa-efficient, sdpa; SageAttention when installed), 40 heads x 128,
   at both sizes: TFLOP/s (4 L^2 d FLOPs), the error of each against an fp32 reference on a
   slice, and the backend `--attention auto` picks for the shape.
3b. fp8 matmul: one A14B FFN linear, dequant vs `torch._scaled_mm` with per-token activation
   scales (`--fp8-matmul auto`), time and error vs dequant and vs the fp32 emulation.
3c. What `batched_cfg` unset decides at 480P / 720P with one fp8 expert resident.
4. Peak memory of each forward (torch.cuda.max_memory_allocated).
5. A Lightning 480P estimate: 4 DiT forwards (guidance 1) from the measured forward time; the
   text encoder and VAE decode are not included (say so in the output).
Results are printed as Markdown and written to benchmarks/results/gpu_check_<device>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dit import dit_flops, inputs, materialize_, median_times  # noqa: E402

from wanmoe.configs import A14B_DIT, DiTConfig  # noqa: E402
from wanmoe.models.dit import WanDiT  # noqa: E402
from wanmoe.runtime.attention import attention  # noqa: E402

GRIDS = {"480P": (21, 60, 104), "720P": (21, 90, 160)}
SMOKE_GRIDS = {"smoke": (2, 6, 8)}
# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets
BF16_PEAK = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
             "L40S": 362.0, "RTX 4090": 165.2, "RTX 5090": 209.5, "RTX 3090": 71.0}


def _peak_for(name: str) -> float | None:
    for key, value in BF16_PEAK.items():
        if re.search(re.escape(key).replace("\\ ", ".*"), name, re.I):
            return value
    return None


def _timed(fn, cuda: bool, runs: int) -> float:
    return median_times([fn], runs, cuda)[0]  # warm-up, then the median (bench_dit)


def _model(cfg: DiTConfig, layers: int, device, fp8: bool) -> WanDiT:
    with torch.device("meta"):
        m = WanDiT(dataclasses.replace(cfg, num_layers=layers))
    materialize_(m, device, lambda n: WanDiT.storage_dtype(n, torch.bfloat16))
    if fp8 and layers:
        from wanmoe.runtime.quant.apply import quantize_model

        quantize_model(m, "fp8", use_scaled_mm=True)  # matmul="auto": _scaled_mm where it exists
    return m.set_compute_dtype(torch.bfloat16).eval()


@torch.no_grad()
def dit_rows(cfg, grids, device, cuda, blocks: int, runs: int, peak_tflops, out: list) -> dict:
    out.append("| weights | grid | tokens | s / block | s / 40-layer forward (est.) | TFLOP/s | % bf16 peak | peak GiB |")
    out.append("|---|---|---|---|---|---|---|---|")
    per_forward = {}
    for fp8 in (False, True):
        if fp8 and cuda and torch.cuda.get_device_capability() < (8, 9):
            out.append("| fp8 | - | - | - | - | - | - | (no fp8 tensor cores: skipped) |")
            continue
        empty, full = _model(cfg, 0, device, fp8), _model(cfg, blocks, device, fp8)
        for label, grid in grids.items():
            x, t, ctx = inputs(cfg, grid, device, torch.bfloat16)
            tokens = math.prod(grid) // 4
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t_full = _timed(lambda: full(x, t, [ctx]), cuda, runs)
            t_empty = _timed(lambda: empty(x, t, [ctx]), cuda, runs)
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            per_block = max(t_full - t_empty, 0.0) / blocks
            t40 = t_empty + cfg.num_layers * per_block
            tflops = dit_flops(cfg, tokens) / t40 / 1e12
            pct = f"{100 * tflops / peak_tflops:.0f} %" if peak_tflops else "-"
            name = "fp8 (scaled_mm)" if fp8 else "bf16"
            per_forward[(name, label)] = t40
            out.append(f"| {name} | {label} {grid} | {tokens} | {per_block:.3f} | {t40:.2f} | "
                       f"{tflops:.0f} | {pct} | {peak:.1f} |")
        del empty, full
        if cuda:
            torch.cuda.empty_cache()
    return per_forward


@torch.no_grad()
def attention_rows(cfg, grids, device, cuda, runs: int, out: list) -> None:
    """Every registry backend the device can run (SageAttention too when installed), its TFLOP/s
    and error, and what `--attention auto` picks for the shape."""
    from wanmoe.runtime.attention_tune import REGISTRY, AttentionAutotuner

    out.append("\n| backend | grid | tokens | ms | TFLOP/s | max rel err vs fp32 (first 1024 queries) |")
    out.append("|---|---|---|---|---|---|")
    picks = []
    for label, grid in grids.items():
        tokens = math.prod(grid) // 4
        g = torch.Generator(device=device).manual_seed(0)
        dtype = torch.bfloat16 if cuda else torch.float32
        q, k, v = (torch.randn(1, tokens, cfg.num_heads, cfg.head_dim, generator=g, device=device,
                               dtype=dtype) for _ in range(3))
        ref = attention(q[:, :1024].float(), k.float(), v.float(), backend="reference")
        names = ["reference"] if not cuda else []
        names += [n for n, b in REGISTRY.items() if b.available(q)]
        for name in names:
            fn = (lambda: attention(q, k, v, backend="reference")) if name == "reference" else \
                (lambda b=REGISTRY[name]: b.fn(q, k, v))
            try:
                ms = 1e3 * _timed(fn, cuda, runs)
                err = ((fn()[:, :1024].float() - ref).abs().max() / ref.abs().max()).item()
            except Exception as e:  # noqa: BLE001 - report a kernel that cannot run, keep going
                out.append(f"| {name} | {label} | {tokens} | failed: {type(e).__name__} | - | - |")
                continue
            flops = 4 * tokens * tokens * cfg.dim
            out.append(f"| {name}{' (approx.)' if name in REGISTRY and not REGISTRY[name].exact else ''} "
                       f"| {label} | {tokens} | {ms:.1f} | {flops / ms / 1e9:.0f} | {err:.1e} |")
        tuner = AttentionAutotuner(sage=True, devices=("cuda", "cpu"), log=picks.append)
        tuner(q, k, v)
        del q, k, v, ref
    out.append("\n`--attention auto+sage` choice per shape (auto excludes sage):\n")
    out += [f"- {line}" for line in picks]


@torch.no_grad()
def fp8_matmul_rows(cfg, grids, device, cuda, runs: int, out: list) -> None:
    """One A14B FFN linear (dim -> ffn_dim) at each grid's token count: fp8 dequant vs
    `torch._scaled_mm` with per-token scales (where the path exists), error vs dequant and vs
    the float32 emulation of the quantise-matmul."""
    from wanmoe.runtime.quant.linear import FP8Linear, quantize_rows, scaled_mm_emulated
    from wanmoe.runtime.quant.quantize import quantize_fp8

    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(1)
    w = torch.randn(cfg.ffn_dim, cfg.dim, generator=g, device=device) * cfg.dim**-0.5
    layers = {m: FP8Linear(*quantize_fp8(w), matmul=m) for m in ("dequant", "auto" if cuda else "scaled")}
    out.append("\n| fp8 linear (dim -> ffn) | grid | tokens | path | ms | TFLOP/s | rel err vs dequant | "
               "rel err vs fp32 emulation |")
    out.append("|---|---|---|---|---|---|---|---|")
    for label, grid in grids.items():
        tokens = math.prod(grid) // 4
        x = torch.randn(tokens, cfg.dim, generator=g, device=device).to(dtype)
        base = layers["dequant"](x).float()
        emu = scaled_mm_emulated(*quantize_rows(x), layers["dequant"].weight, layers["dequant"].weight_scale,
                                 torch.float32)
        for mode, lin in layers.items():
            ms = 1e3 * _timed(lambda: lin(x), cuda, runs)
            y = lin(x).float()
            tflops = 2 * tokens * cfg.dim * cfg.ffn_dim / ms / 1e9
            e_deq = ((y - base).norm() / base.norm()).item()
            e_emu = ((y - emu).norm() / emu.norm()).item()
            out.append(f"| {mode} | {label} | {tokens} | {lin.path(x)} | {ms:.2f} | {tflops:.0f} | "
                       f"{e_deq:.1e} | {e_emu:.1e} |")
        del x, base, emu


def cfg_batch_rows(grids, device, cuda, out: list) -> None:
    """What batched_cfg=None decides here for A14B with one fp8 expert resident (memory model)."""
    from wanmoe.configs import T2V_A14B
    from wanmoe.runtime.cfg_batch import decide_batched_cfg, free_device_bytes
    from wanmoe.runtime.memory import expert_bytes

    free = free_device_bytes(torch.device(device))
    if free is not None:
        non_block, block = expert_bytes(T2V_A14B, "fp8", torch.bfloat16)
        free -= non_block + 40 * block
    out.append("\nAuto CFG batching (A14B, one fp8 expert resident, free memory measured now):\n")
    for label, grid in grids.items():
        d = decide_batched_cfg(T2V_A14B, math.prod(grid) // 4, torch.bfloat16, "cuda" if cuda else "cpu",
                               free, "fp8")
        out.append(f"- {label}: {'batched' if d.batched else 'separate'} ({d.reason})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="run on CPU with a tiny width")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    if args.smoke:
        cfg, grids = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=40, in_dim=16, out_dim=16,
                               text_dim=64, text_len=32), SMOKE_GRIDS
    else:
        cfg, grids = A14B_DIT, GRIDS
    name = torch.cuda.get_device_name() if cuda else f"CPU smoke ({platform.machine()})"
    out = [f"# gpu_check: {name}", ""]
    if cuda:
        p = torch.cuda.get_device_properties(0)
        out.append(f"compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                   f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        out.append(f"torch {torch.__version__} (smoke run: numbers mean nothing)")
    peak = _peak_for(name) if cuda else None
    out.append(f"dense bf16 peak used for percentages: {peak or 'unknown'} TFLOP/s\n")
    t0 = time.perf_counter()
    per_forward = dit_rows(cfg, grids, device, cuda, args.blocks, args.runs, peak, out)
    attention_rows(cfg, grids, device, cuda, args.runs, out)
    fp8_matmul_rows(cfg, grids, device, cuda, args.runs, out)
    cfg_batch_rows(grids if cuda else GRIDS, device, cuda, out)
    first = next(iter(grids))
    for weights in ("bf16", "fp8 (scaled_mm)"):
        if (weights, first) in per_forward:
            est = 4 * per_forward[(weights, first)]
            out.append(f"\nLightning {first} estimate ({weights}): 4 forwards x "
                       f"{per_forward[(weights, first)]:.2f} s = {est:.1f} s of DiT time per video "
                       f"(text encoder and VAE decode not included; official 40-step CFG: "
                       f"{80 * per_forward[(weights, first)]:.0f} s)")
    out.append(f"\nwall time of this check: {time.perf_counter() - t0:.0f} s")
    text = "\n".join(out)
    print(text)
    if cuda:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        path = Path(__file__).resolve().parent / "results" / f"gpu_check_{slug}.md"
        path.write_text(text + "\n")
        print(f"written: {path}")


if __name__ == "__main__":
    main()
