"""Measured peak device memory against `runtime.memory`'s prediction, on emulated 12/16/24 GB cards.

GPU (default when CUDA is available): for each scenario (A14B dims, 480P / 720P, 81 frames,
bf16 compute; block linears bf16 or GGUF Q4_K_M with random bytes) it builds what the device
holds with `--offload blocks:2`: the non-block tensors and 2 real-size blocks (each block of an
expert is the same size, so 2 resident blocks are exactly what streaming keeps on the device),
caps the process with `torch.cuda.set_per_process_memory_fraction(card / total)` for each card,
runs one DiT forward (SDPA attention) and records `torch.cuda.max_memory_allocated`, or OOM.
Predicted = non-block + 2 blocks + activations + dequantisation transient
(`runtime.memory.predict(...).parts`). `--vae` also decodes 81 frames with the Wan2.1 VAE
(random weights), untiled and with the automatic tile for each card (`auto_vae_tile`).

A row is consistent when (predicted + CUDA context fits the card) == (the run did not OOM), and
the measured peak is within 10 % of the prediction where it ran.

`--smoke` (CPU, no GPU): imports, computes every prediction and the card verdicts, and runs
the same measuring code on a tiny model with the live-byte tracer as the meter.
Run from the repository root: `PYTHONPATH=. python benchmarks/gpu_memory.py [--vae] [--json F]`.
Record the GPU model, driver and torch version with the numbers (printed first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from wanmoe.configs import T2V_A14B, DiTConfig
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.memory import CUDA_CONTEXT, MemoryRequest, auto_vae_tile, predict, vae_decode_bytes
from wanmoe.runtime.memtrace import LiveBytes

GIB = 2**30
CARDS = {"12 GB": 12 * GIB, "16 GB": 16 * GIB, "24 GB": 24 * GIB}
# (size, width, height, weights, resident blocks): 2 = `--offload blocks:2`; 40 = one whole
# expert resident (the fit boundary of the emulated cards: Q4_K_M 480P 13.4 GB, 720P 16.3 GB)
SCENARIOS = [("480P", 832, 480, "bf16", 2), ("480P", 832, 480, "Q4_K_M", 2),
             ("720P", 1280, 720, "bf16", 2), ("720P", 1280, 720, "Q4_K_M", 2),
             ("480P", 832, 480, "Q4_K_M", 40), ("720P", 1280, 720, "Q4_K_M", 40)]
FRAMES = 81


def build(cfg: DiTConfig, fmt: str, device, dtype=torch.bfloat16) -> WanDiT:
    """Random weights in the storage layout of a `dtype` run; block linears as GGUF Q4_K_M
    (Q4_K, the attention v and ffn.2 at Q6_K; random bytes) when fmt says so."""
    from wanmoe.runtime.quant.apply import block_linears, install_quantized
    from wanmoe.runtime.quant.gguf_dequant import GGUFWeight, row_bytes
    from wanmoe.runtime.quant.linear import DequantWorkspace

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark module
    from bench_offload import random_weights

    g = torch.Generator(device=device).manual_seed(0)
    model = random_weights(cfg, device, dtype, g)
    if fmt == "Q4_K_M":
        workspace = DequantWorkspace()
        for name, linear in list(block_linears(model)):
            qtype = "Q6_K" if name.endswith((".v", "ffn.2")) else "Q4_K"
            out_f, in_f = linear.weight.shape
            raw = torch.randint(0, 256, (out_f, row_bytes(qtype, in_f)), dtype=torch.uint8,
                                device=device, generator=g)
            install_quantized(model, name + ".weight", GGUFWeight(raw, qtype, (out_f, in_f)),
                              workspace=workspace)
    return model.set_compute_dtype(dtype).eval()


def resident_bytes(model) -> int:
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in unique.values())


def prediction(width: int, height: int, fmt: str, blocks: int) -> dict:
    """Predicted device bytes of one expert's forward with `blocks` blocks resident and of the
    untiled decode."""
    pred = predict(MemoryRequest(T2V_A14B, width, height, FRAMES, fmt, "blocks", blocks,
                                 text_on_device=False))
    p = pred.parts
    forward = p["dit_weights_device"] + p["dit_activations"] + p["weight_transient"]
    return {"forward": forward, "run_peak": pred.vram_peak, "run_stage": pred.vram_stage,
            "decode": p["vae_weights"] + p["vae_decode"]}


def measure(fn, device) -> tuple[int | None, str]:
    """(peak bytes of fn over what was allocated before, '') or (None, 'OOM')."""
    if device.type != "cuda":  # the smoke meter: live bytes of the tensors fn creates
        with torch.no_grad(), LiveBytes() as trace:
            fn()
        return trace.peak, ""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    try:
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        return None, "OOM"
    return torch.cuda.max_memory_allocated(device) - base, ""


def forward_inputs(cfg, width, height, device):
    st, sh, sw = T2V_A14B.vae.stride
    x = torch.randn(1, cfg.in_dim, (FRAMES - 1) // st + 1, height // sh, width // sw, device=device)
    t = torch.tensor([900.0], device=device)
    ctx = [torch.randn(100, cfg.text_dim, device=device)]
    return x, t, ctx


def run_gpu(args) -> list[dict]:
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    rows = []
    for label, width, height, fmt, blocks in SCENARIOS:
        pred = prediction(width, height, fmt, blocks)
        cfg = dataclasses.replace(T2V_A14B.dit, num_layers=blocks)
        model = build(cfg, fmt, device)
        weights = resident_bytes(model)
        x, t, ctx = forward_inputs(cfg, width, height, device)
        for card, cap in CARDS.items():
            torch.cuda.set_per_process_memory_fraction(min(1.0, (cap - CUDA_CONTEXT) / total), device)
            peak, note = measure(lambda: model(x, t, ctx), device)
            measured = None if peak is None else weights + peak
            rows.append(row(f"forward, {blocks} blocks", label, fmt, card, cap, pred["forward"],
                            measured, note))
        del model, x
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
        if args.vae and fmt == "bf16" and blocks == 2:
            rows += run_vae(label, width, height, pred, device, total)
    return rows


def run_vae(label, width, height, pred, device, total) -> list[dict]:
    from wanmoe.vae import build_vae
    from wanmoe.vae.tiling import TileSpec

    vae = build_vae(T2V_A14B.vae).to(device).eval()
    weights = resident_bytes(vae)
    st, sh, sw = T2V_A14B.vae.stride
    z = torch.randn(1, T2V_A14B.vae.z_dim, (FRAMES - 1) // st + 1, height // sh, width // sw, device=device)
    rows = []
    for card, cap in CARDS.items():
        tile = auto_vae_tile(T2V_A14B, width, height, FRAMES, cap - CUDA_CONTEXT - weights)
        spec = None if tile is None else TileSpec(*tile)
        predicted = weights + vae_decode_bytes(T2V_A14B, width, height, FRAMES, tile)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (cap - CUDA_CONTEXT) / total), device)
        peak, note = measure(lambda: vae.decode(z, tiling=spec), device)
        measured = None if peak is None else weights + peak
        rows.append(row("decode " + ("untiled" if tile is None else "tile %dx%d" % tile[:2]),
                        label, "fp32", card, cap, predicted, measured, note))
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    return rows


def row(what, label, fmt, card, cap, predicted, measured, note) -> dict:
    fits = predicted + CUDA_CONTEXT <= cap
    ran = measured is not None
    err = None if not ran else (predicted - measured) / measured
    return {"what": what, "size": label, "weights": fmt, "card": card, "predicted_bytes": predicted,
            "predicted_fits": fits, "measured_bytes": measured, "note": note,
            "error": err, "consistent": None if note.startswith("(smoke") else
            fits == ran and (err is None or abs(err) <= 0.10)}


def run_smoke() -> list[dict]:
    rows = []
    for label, width, height, fmt, blocks in SCENARIOS:
        pred = prediction(width, height, fmt, blocks)
        for card, cap in CARDS.items():
            rows.append(row(f"forward, {blocks} blocks", label, fmt, card, cap, pred["forward"], None,
                            "(smoke: not run)"))
    # the measuring code on a tiny model (CPU, live-byte meter)
    cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                    text_dim=32, text_len=16)
    for fmt in ("bf16", "Q4_K_M"):
        cfg_q = dataclasses.replace(cfg, dim=256, ffn_dim=512) if fmt == "Q4_K_M" else cfg  # K-quants: 256-wide rows
        model = build(cfg_q, fmt, torch.device("cpu"))
        x = torch.randn(1, 16, 2, 8, 8)
        peak, _ = measure(lambda: model(x, torch.tensor([900.0]), [torch.randn(5, 32)]), torch.device("cpu"))
        assert peak and peak > 0 and resident_bytes(model) > 0
    return rows


def print_rows(rows) -> None:
    print("| what | size | weights | card | predicted GB | fits? | measured GB | error | consistent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = "-" if r["measured_bytes"] is None else f"{r['measured_bytes'] / 1e9:.2f}"
        e = "-" if r["error"] is None else f"{100 * r['error']:+.1f} %"
        print(f"| {r['what']} | {r['size']} | {r['weights']} | {r['card']} | {r['predicted_bytes'] / 1e9:.2f} "
              f"| {'yes' if r['predicted_fits'] else 'no'} | {m} {r['note']} | {e} | {r['consistent']} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU: predictions + the code on a tiny model")
    ap.add_argument("--vae", action="store_true", help="also the VAE decode (untiled / auto tile)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: use --smoke", file=sys.stderr)
        return 2
    if args.smoke:
        print(f"smoke run on the CPU, torch {torch.__version__}")
        rows = run_smoke()
    else:
        props = torch.cuda.get_device_properties(0)
        print(f"{props.name}, {props.total_memory / GIB:.1f} GiB, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")
        rows = run_gpu(args)
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if args.smoke or all(r["consistent"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
