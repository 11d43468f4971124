"""`wanmoe plan`: which weight format and offload mode fit a GPU, and how fast (no checkpoint).

One row per weight format x offload mode: predicted peak VRAM and host RAM
(`runtime.memory`), seconds per step and per video, fits or not with the reason. When a row
does not fit as is, the cheapest extra flags that make it fit are tried in order (`--t5-cpu`,
then `--vae-tile`) and shown. Time model (an estimate, docs/memory.md): compute = the DiT's
analytic FLOPs over MFU x the card's dense bf16 rate; block streaming moves every block's
bytes over PCIe once per forward, overlapped with compute (the slower of the two bounds a
step); expert offload moves each expert once per video.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import torch

from .configs import PRESETS, DiTConfig
from .errors import InputError
from .runtime.devices import DEVICES, Device, find_device, parse_bytes
from .runtime.memory import (OFFLOAD_MODES, WEIGHT_FORMATS, MemoryRequest, fits, predict,
                             weight_format)

MFU = 0.5  # share of the dense bf16 rate a DiT forward achieves (an assumption)
SIZES = {"480P": (832, 480), "720P": (1280, 720)}
_MODELS = {"t2v-a14b": "t2v-A14B", "a14b": "t2v-A14B", "ti2v-5b": "ti2v-5B", "5b": "ti2v-5B"}


def dit_flops(cfg: DiTConfig, tokens: int) -> float:
    """Analytic forward FLOPs of one sample (formula in benchmarks/bench_dit.py's docstring;
    checked against torch's FlopCounterMode in tests/unit/test_dit_model.py)."""
    d, L, lt, f = cfg.dim, tokens, cfg.text_len, cfg.ffn_dim
    p = math.prod(cfg.patch_size)
    block = 8 * L * d * d + 4 * L * L * d + 4 * L * d * d + 4 * lt * d * d + 4 * L * lt * d + 4 * L * d * f
    time_mlp = 2 * (cfg.freq_dim * d + d * d + 6 * d * d)
    return cfg.num_layers * block + 2 * L * d * cfg.in_dim * p + 2 * lt * (cfg.text_dim * d + d * d) \
        + 2 * L * d * cfg.out_dim * p + time_mlp


def _timing(req: MemoryRequest, pred, device: Device | None, steps: int) -> tuple[float | None, float | None]:
    """(seconds per step, seconds per video) of the denoise loop; None without a known device."""
    if device is None:
        return None, None
    forwards = 2  # conditional + unconditional (CFG); batched CFG is one forward of batch 2
    compute = forwards * dit_flops(req.preset.dit, req.tokens) / (device.bf16_tflops * 1e12 * MFU)
    per_step, extra = compute, 0.0
    bw = device.pcie_gbps * 1e9
    if req.offload == "blocks":
        streams = 1 if req.batched_cfg else forwards
        moved = streams * pred.parts["expert_block"] * req.preset.dit.num_layers
        per_step = max(compute, moved / bw)
    elif req.offload == "expert":
        extra = len(req.preset.experts) * pred.parts["expert"] / bw
    return per_step, per_step * steps + extra


def _tile(req: MemoryRequest) -> tuple[int, int, int]:
    _, sh, sw = req.preset.vae.stride
    h, w = req.height // sh, req.width // sw
    return (math.ceil(h / 2), math.ceil(w / 2), 8)


def plan_row(req: MemoryRequest, vram: int | None, ram: int | None, device: Device | None,
             steps: int) -> dict:
    """One row: the request as is, or with --t5-cpu / --vae-tile when that is what makes it fit."""
    tries = [(req, [])]
    tries.append((dataclasses.replace(req, text_on_device=False), ["--t5-cpu"]))
    tile = _tile(req) if vram is None else _decode_tile(req, vram)
    tries.append((dataclasses.replace(req, text_on_device=False, vae_tile=tile),
                  ["--t5-cpu", "--vae-tile", ",".join(map(str, tile))]))
    for r, flags in tries:
        pred = predict(r)
        ok, reason = (True, "no device given") if vram is None else fits(pred, vram, ram)
        if ok or vram is None:
            break
    s_step, s_total = _timing(r, pred, device, steps)
    offload = f"blocks:{r.resident_blocks}" if r.offload == "blocks" else r.offload
    return {"weights": r.weights, "offload": offload, "flags": " ".join(flags),
            "vram_peak_bytes": pred.vram_peak, "ram_peak_bytes": pred.ram_peak,
            "seconds_per_step": s_step, "seconds_total": s_total, "fits": ok, "reason": reason}


def plan_rows(preset, width, height, frames, steps, vram=None, ram=None, device=None,
              batched_cfg=False, dtype=torch.bfloat16) -> list[dict]:
    rows = []
    for fmt in WEIGHT_FORMATS:
        for mode in OFFLOAD_MODES:
            req = MemoryRequest(preset, width, height, frames, fmt, mode, dtype=dtype,
                                batched_cfg=batched_cfg)
            rows.append(plan_row(req, vram, ram, device, steps))
    return rows


def best(rows: list[dict]) -> dict | None:
    """The fastest row that fits (ties: fewer flags, then the first: higher precision)."""
    ok = [r for r in rows if r["fits"]]
    return min(ok, key=lambda r: (r["seconds_total"] or 0, len(r["flags"]))) if ok else None


def _gb(n) -> str:
    return f"{n / 1e9:.1f}"


def _secs(s) -> str:
    return "-" if s is None else (f"{s:.1f}" if s < 100 else f"{s:.0f}")


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'weights':<8} {'offload':<9} {'VRAM GB':>8} {'RAM GB':>7} {'s/step':>7} {'s/video':>8}  fits"]
    for r in rows:
        fit = ("yes" if r["fits"] else "no") + (f" with {r['flags']}" if r["fits"] and r["flags"] else "")
        why = "" if r["fits"] else f" ({r['reason']}{', even with ' + r['flags'] if r['flags'] else ''})"
        lines.append(f"{r['weights']:<8} {r['offload']:<9} {_gb(r['vram_peak_bytes']):>8} "
                     f"{_gb(r['ram_peak_bytes']):>7} {_secs(r['seconds_per_step']):>7} "
                     f"{_secs(r['seconds_total']):>8}  {fit}{why}")
    return "\n".join(lines)


def devices_table(preset, frames, steps, ram=None) -> str:
    """Every built-in device at 480P and 720P with its fastest setting that fits (`ram`: host RAM)."""
    lines = [f"{'device':<22} {'VRAM':>5}  {'480P best':<38} {'720P best':<38}"]
    for dev in DEVICES.values():
        cells = []
        for w, h in SIZES.values():
            b = best(plan_rows(preset, w, h, frames, steps, dev.vram_bytes, ram, dev))
            cells.append("does not fit" if b is None else
                         f"{b['weights']} {b['offload']}{' ' + b['flags'] if b['flags'] else ''}"
                         f" {_secs(b['seconds_total'])} s")
        lines.append(f"{dev.name:<22} {dev.vram_bytes / 2**30:>4.0f}G  {cells[0]:<38} {cells[1]:<38}")
    return "\n".join(lines)


def register_cli(sub) -> None:
    p = sub.add_parser("plan", help="predict memory and speed per weight format and offload mode",
                       description="Predict peak VRAM, host RAM and time per step for every weight "
                                   "format x offload mode on a GPU (no checkpoint needed).")
    p.add_argument("--model", default="t2v-a14b", help="t2v-a14b (default) or ti2v-5b")
    p.add_argument("--gpu", help="a GPU name: RTX 3060, 4090, h100, 'A100 40G', ... (see --devices)")
    p.add_argument("--vram", help="GPU memory instead of --gpu (e.g. 16GB)")
    p.add_argument("--ram", help="host RAM (e.g. 64GB); rows needing more do not fit")
    p.add_argument("--size", help="WIDTH*HEIGHT (default: the model's)")
    p.add_argument("--frames", type=int, help="pixel frames (default: the model's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--batched-cfg", action="store_true", help="plan for --batched-cfg")
    p.add_argument("--devices", action="store_true", help="table of all built-in GPUs at 480P and 720P")
    p.add_argument("--json", action="store_true", help="print JSON (schema in docs/memory.md)")
    p.set_defaults(func=_cmd_plan)


def _preset(name: str):
    key = name.lower()
    if key not in _MODELS:
        raise InputError(f"--model {name!r} is not one of t2v-a14b, ti2v-5b")
    return PRESETS[_MODELS[key]]


def _cmd_plan(args) -> int:
    from .validate import settings_for

    preset = _preset(args.model)
    req = settings_for(preset, size=args.size, frames=args.frames, steps=args.steps, seed=0)
    ram = parse_bytes(args.ram, "--ram") if args.ram else None
    if args.devices:
        print(devices_table(preset, req.frames, req.steps, ram))
        return 0
    if args.gpu and args.vram:
        raise InputError("give --gpu or --vram, not both")
    device = find_device(args.gpu) if args.gpu else None
    vram = device.vram_bytes if device else (parse_bytes(args.vram, "--vram") if args.vram else None)
    rows = plan_rows(preset, req.width, req.height, req.frames, req.steps, vram, ram, device,
                     args.batched_cfg)
    request = {"size": f"{req.width}*{req.height}", "frames": req.frames, "steps": req.steps,
               "vram_bytes": vram, "ram_bytes": ram, "batched_cfg": args.batched_cfg}
    if args.json:
        json.dump({"model": preset.name, "device": device.name if device else None,
                   "request": request, "rows": rows}, sys.stdout, indent=1)
        print()
        return 0
    where = device.name if device else (f"{vram / 2**30:.0f} GiB VRAM" if vram else "no device limit")
    print(f"{preset.name} {req.width}*{req.height} {req.frames} frames {req.steps} steps on {where}"
          + (f", {ram / 2**30:.0f} GiB RAM" if ram else ""))
    print(format_rows(rows))
    b = best(rows) if vram else None
    if b is not None:
        print(f"best: --weights {b['weights']} --offload {b['offload']} {b['flags']}".rstrip())
    return 0


# ---- pre-flight (the generate command, before any weight is read) -------------------------

def _decode_tile(req: MemoryRequest, vram: int) -> tuple[int, int, int]:
    """The tile the decode picks by itself on a `vram`-byte card (Pipeline.decode ->
    runtime.memory.auto_vae_tile), from what stays resident while it decodes; halves when the
    untiled decode fits anyway."""
    from .runtime.memory import CUDA_CONTEXT, auto_vae_tile

    pred = predict(dataclasses.replace(req, text_on_device=False, vae_tile=None))
    other = pred.stages["vae decode"] - pred.parts["vae_decode"]  # resident while decoding
    return auto_vae_tile(req.preset, req.width, req.height, req.frames,
                         vram - CUDA_CONTEXT - other) or _tile(req)


def _auto_tile(preset, rt, settings, fmt: str, vram: int):
    """The tile `runtime.memory.auto_vae_tile` picks for the decode stage of this run (None:
    untiled)."""
    from .runtime.memory import CUDA_CONTEXT, auto_vae_tile

    req = MemoryRequest(preset, settings.width, settings.height, settings.frames, fmt,
                        rt.offload.value, rt.resident_blocks, rt.dtype, rt.per_token_time,
                        rt.batched_cfg, None, rt.text_device is None or rt.text_device.type != "cpu",
                        getattr(rt, "text_weights", None))
    pred = predict(req)
    other = pred.stages["vae decode"] - pred.parts["vae_decode"]  # resident while decoding
    return auto_vae_tile(preset, settings.width, settings.height, settings.frames,
                         vram - CUDA_CONTEXT - other)


def memory_preflight(preset, rt, settings, vram: int, tile=None, expert_files=()) -> None:
    """Refuse (InputError, one line) a run the memory model says cannot fit `vram` bytes.

    Checked: explicit offload modes with a known weight format; `auto` and GGUF / kept files
    are not checked (their choice or size is made later). The message names the predicted
    peak, the card's memory and the nearest setting that fits.
    """
    from .runtime.config import OffloadMode

    fmt = weight_format(rt, expert_files)
    if fmt is None or rt.offload is OffloadMode.AUTO:
        return
    if tile is None:  # the decode tiles itself when memory is short (Pipeline.decode)
        tile = _auto_tile(preset, rt, settings, fmt, vram)
    req = MemoryRequest(preset, settings.width, settings.height, settings.frames, fmt,
                        rt.offload.value, rt.resident_blocks, rt.dtype, rt.per_token_time,
                        rt.batched_cfg, tile, rt.text_device is None or rt.text_device.type != "cpu",
                        getattr(rt, "text_weights", None))
    pred = predict(req)
    ok, reason = fits(pred, vram)
    if ok:
        return
    rows = plan_rows(preset, settings.width, settings.height, settings.frames, settings.steps,
                     vram, None, None, rt.batched_cfg, rt.dtype)
    same = [r for r in rows if r["fits"] and r["weights"] == fmt]
    near = (same or [r for r in rows if r["fits"]] or [None])[0]
    hint = "no weight format / offload mode fits; use a smaller --size or fewer --frames" if near is None \
        else f"nearest that fits: --weights {near['weights']} --offload {near['offload']}" \
             f"{' ' + near['flags'] if near['flags'] else ''} ({_gb(near['vram_peak_bytes'])} GB)"
    offload = f"blocks:{rt.resident_blocks}" if rt.offload is OffloadMode.BLOCKS else rt.offload.value
    raise InputError(f"--weights {fmt} --offload {offload} at {settings.width}*{settings.height}, "
                     f"{settings.frames} frames {reason}; {hint} (`wanmoe plan` shows all)")
