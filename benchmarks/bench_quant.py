"""Quantised weights: quality of the DiT output and speed of each quantised linear.

1. Quality: a tiny random WanDiT (dim 256, ffn 512) in bf16 compute; relative L2 error of the
   output of each weight format vs the same model with unquantised weights (bf16 compute).
2. Speed: one linear at A14B shapes (5120x5120 q/k/v/o, 13824x5120 ffn.0) on a few hundred
   tokens: bf16 F.linear (baseline) vs GGUF Q8_0 / Q6_K / Q4_K, fp8 and int8 weight-only (each
   dequantises into a reused workspace buffer, then a matmul); median times and ratio
   candidate / baseline from the same run. On CUDA too when available (plus fp8 `_scaled_mm`).

Usage (repo root): PYTHONPATH=. python benchmarks/bench_quant.py [--tokens 256] [--reps 5]
       [--device cpu|cuda] [--act-dtype bf16|fp32] [--skip-quality] [--skip-speed]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from wanmoe.configs import DiTConfig
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.quant.apply import block_linears, install_quantized, quantize_model
from wanmoe.runtime.quant.estimate import block_weight_type
from wanmoe.runtime.quant.linear import DequantWorkspace, FP8Linear, GGUFLinear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_gguf, quantize_int8

TINY = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, in_dim=16, out_dim=16,
                 freq_dim=256, text_dim=256, text_len=32)
SHAPES = {"q/k/v/o 5120x5120": (5120, 5120), "ffn.0 13824x5120": (13824, 5120)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _tiny_model(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    m = WanDiT(TINY)
    with torch.no_grad():
        for name, p in m.named_parameters():  # non-trivial weights with O(1) activations
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5 if p.dim() > 1 else 10))
    return m.eval().set_compute_dtype(torch.bfloat16)


def _gguf_model(qtype: str) -> WanDiT:
    m = _tiny_model()
    ws = DequantWorkspace()
    for name, lin in list(block_linears(m)):
        q = block_weight_type(name + ".weight", qtype)  # Q4_K_M: v and ffn.2 Q6_K (formats.md §4)
        install_quantized(m, name + ".weight", quantize_gguf(lin.weight, q), workspace=ws)
    return m


@torch.no_grad()
def quality_table(device: torch.device) -> list[str]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 8, 8, generator=g).to(device)
    ctx = [torch.randn(20, 256, generator=g).to(device)]
    t = torch.tensor([700], device=device)
    base = _tiny_model().to(device)(x, t, ctx)
    rows = ["| weights | bytes/weight (block linears) | rel. L2 error vs bf16 weights |", "|---|---|---|"]
    builds = {"fp8 (e4m3, per-channel scale)": (lambda: quantize_model(_tiny_model(), "fp8"), 1.0),
              "int8 (per-channel scale)": (lambda: quantize_model(_tiny_model(), "int8"), 1.0),
              "GGUF Q8_0": (lambda: _gguf_model("Q8_0"), 34 / 32),
              "GGUF Q6_K": (lambda: _gguf_model("Q6_K"), 210 / 256),
              "GGUF Q4_K_M (Q4_K + Q6_K)": (lambda: _gguf_model("Q4_K_M"), None),
              "GGUF Q4_K (all)": (lambda: _gguf_model("Q4_K"), 144 / 256)}
    for label, (build, bpw) in builds.items():
        y = build().to(device)(x, t, ctx)
        err = ((y - base).norm() / base.norm()).item()
        rows.append(f"| {label} | {'mixed' if bpw is None else f'{bpw:.3f}'} | {err:.2e} |")
    return rows


def _candidates(w: torch.Tensor, device: torch.device) -> dict:
    ws = DequantWorkspace()  # every candidate dequantises into the same reused buffer
    mods = {f"GGUF {q}": GGUFLinear(quantize_gguf(w, q), None, ws) for q in ("Q8_0", "Q6_K", "Q4_K")}
    mods["fp8 weight-only"] = FP8Linear(*quantize_fp8(w), workspace=ws)
    mods["int8 weight-only"] = Int8Linear(*quantize_int8(w), workspace=ws)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        mods["fp8 _scaled_mm"] = FP8Linear(*quantize_fp8(w), use_scaled_mm=True)
    return {k: m.to(device) for k, m in mods.items()}


@torch.no_grad()
def speed_table(device: torch.device, tokens: int, reps: int, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    tag = str(dtype).removeprefix("torch.")
    rows = _Printed([f"| shape | weights | median ms | of which dequant ms | {tag} F.linear ms "
                     "| ratio (cand./base) | weight MB |", "|---|---|---|---|---|---|---|"])
    for label, (out_f, in_f) in SHAPES.items():
        w = torch.randn(out_f, in_f) / in_f**0.5
        x = torch.randn(tokens, in_f).to(device=device, dtype=dtype)
        w_dense = w.to(device=device, dtype=dtype)
        base = median_ms(lambda: F.linear(x, w_dense), device, reps)
        mb = w_dense.numel() * w_dense.element_size() / 1e6
        rows.append(f"| {label} | {tag} (baseline) | {base:.1f} | - | {base:.1f} | 1.00 | {mb:.0f} |")
        buf = torch.empty(out_f, in_f, device=device, dtype=dtype)
        for name, mod in _candidates(w, device).items():
            ms = median_ms(lambda mod=mod: mod(x), device, reps)
            deq = median_ms(lambda mod=mod: mod.dequantized(dtype, out=buf), device, reps)
            mb = sum(b.numel() * b.element_size() for b in mod.buffers()) / 1e6
            rows.append(f"| {label} | {name} | {ms:.1f} | {deq:.1f} | {base:.1f} | {ms / base:.2f} | {mb:.0f} |")
        del w, w_dense
    return rows


class _Printed(list):
    """A list of table rows that also prints each row as it is added (long runs show progress)."""

    def __init__(self, rows):
        super().__init__()
        for r in rows:
            self.append(r)

    def append(self, row):
        print(row, flush=True)
        super().append(row)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--act-dtype", choices=["bf16", "fp32"], default="bf16",
                    help="activation / compute dtype of the speed runs (baseline = dense weights in it)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"hardware: {hardware(device)}; torch {torch.__version__}")
    if not args.skip_quality:
        print("\nDiT output quality (tiny random WanDiT, 4 blocks, bf16 compute):")
        print("\n".join(quality_table(device)))
    if not args.skip_speed:
        dtype = torch.bfloat16 if args.act_dtype == "bf16" else torch.float32
        print(f"\nLinear speed, {args.tokens} tokens, {args.act_dtype} activations, {args.reps} reps (median):")
        speed_table(device, args.tokens, args.reps, dtype)  # rows print as they are measured


if __name__ == "__main__":
    main()
