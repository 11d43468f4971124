"""Multi-GPU benchmark of one denoise step of a T2V-A14B-sized DiT: 1 GPU vs Ulysses vs CFG x Ulysses.

    torchrun --nproc_per_node N benchmarks/gpu_multi.py --size 1280*720 --frames 81 --layers 8
    torchrun --nproc_per_node 2 benchmarks/gpu_multi.py --tiny      # CPU / gloo smoke test

Random weights (same seed on every rank), real A14B widths, `--layers` blocks (the step time
scales linearly in the block count; the script also prints the 40-layer extrapolation). In the
same run: baseline = the plain DiT on rank 0 alone (2 forwards per step: CFG), candidate 1 =
Ulysses over all N ranks (2 forwards), candidate 2 = CFG parallel x Ulysses U = N/2 (1 forward
+ the velocity exchange); median seconds per step, ratio to the baseline, peak memory, the
relative difference of the Ulysses output to the baseline (quality column), and the measured
all-to-all bandwidth next to the byte count of `wanmoe.parallel.comm_model`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from wanmoe.configs import T2V_A14B
from wanmoe.models.dit import WanDiT
from wanmoe.parallel.ulysses import install_ulysses, remove_ulysses, seq_to_heads
from wanmoe.testing.tiny import tiny_dit_config


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeats: int, group=None) -> float:
    """Median seconds of fn() after one warm-up (barrier-aligned when a group is given)."""
    fn()
    times = []
    for _ in range(repeats):
        if group is not None:
            dist.barrier(group)
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(cfg, dev, dtype):
    torch.manual_seed(0)
    with torch.device(dev):
        model = WanDiT(cfg)
        model.init_weights()
        torch.nn.init.normal_(model.head.head.weight, std=0.02)  # a zero head hides differences
    return model.set_compute_dtype(dtype).eval()


def inputs(cfg, args, dev):
    g = torch.Generator(device="cpu").manual_seed(1)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    x = torch.randn(1, cfg.in_dim, f, h, w, generator=g).to(dev)
    ctx = [torch.randn(min(cfg.text_len, 64), cfg.text_dim, generator=g).to(dev)]
    return x, torch.tensor([900], device=dev), ctx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="832*480")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny DiT, fp32, 64*64x5 (CPU smoke test)")
    args = p.parse_args()
    args.width, args.height = map(int, args.size.replace("x", "*").split("*"))
    cuda = torch.cuda.is_available() and not args.tiny
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if args.tiny:
        cfg, dtype, args.width, args.height, args.frames = tiny_dit_config(16), torch.float32, 64, 64, 5
    else:
        cfg, dtype = replace(T2V_A14B.dit, num_layers=args.layers), torch.bfloat16
    model = build(cfg, dev, dtype)
    x, t, ctx = inputs(cfg, args, dev)
    world_group = dist.group.WORLD
    rows = {}
    with torch.no_grad():
        ref = model(x, t, ctx) if rank == 0 else None
        if rank == 0:  # baseline: one GPU, conditional + unconditional forward
            rows["1 GPU"] = timed(lambda: (model(x, t, ctx), model(x, t, ctx)), dev, args.repeats)
        dist.barrier()
        install_ulysses(model, world, rank, world_group)
        out = model(x, t, ctx)
        rows[f"Ulysses U={world}"] = timed(lambda: (model(x, t, ctx), model(x, t, ctx)), dev,
                                           args.repeats, world_group)
        remove_ulysses(model)
        if world % 2 == 0 and world // 2 <= cfg.num_heads and cfg.num_heads % (world // 2) == 0:
            rows[f"CFG x Ulysses U={world // 2}"] = cfg_ulysses_step(model, x, t, ctx, rank, world,
                                                                    dev, args.repeats)
        a2a = alltoall_gbs(cfg, x, world, dev, args.repeats)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
    if rank == 0:
        report(args, cfg, dev, world, rows, out, ref, a2a, peak)
    dist.destroy_process_group()


def cfg_ulysses_step(model, x, t, ctx, rank, world, dev, repeats) -> float:
    u = world // 2
    groups = [dist.new_group(list(range(c * u, (c + 1) * u))) for c in range(2)]
    pairs = [dist.new_group([i, u + i]) for i in range(u)]
    if u > 1:
        install_ulysses(model, u, rank % u, groups[rank // u])
    pair = pairs[rank % u]

    def step():
        v = model(x, t, ctx)
        both = [torch.empty_like(v) for _ in range(2)]
        dist.all_gather(both, v, group=pair)
        return both[1] + 4.0 * (both[0] - both[1])

    seconds = timed(step, dev, repeats, dist.group.WORLD)
    remove_ulysses(model)
    return seconds


def alltoall_gbs(cfg, x, world, dev, repeats) -> tuple[float, float]:
    """(bytes sent per rank, GB/s) of one q-sized seq_to_heads all-to-all."""
    tokens = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    local = -(-tokens // world)
    q = torch.randn(1, local, cfg.num_heads, cfg.head_dim, device=dev).to(torch.bfloat16)
    sent = q.numel() * q.element_size() * (world - 1) / world
    s = timed(lambda: seq_to_heads(q, world, dist.group.WORLD), dev, repeats, dist.group.WORLD)
    return sent, sent / s / 1e9


def report(args, cfg, dev, world, rows, out, ref, a2a, peak) -> None:
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (gloo)"
    base = rows["1 GPU"]
    print(f"hardware: {world} x {hw} | torch {torch.__version__} | {args.width}*{args.height} "
          f"x {args.frames} frames | {cfg.num_layers} layers (of 40) | dim {cfg.dim}")
    print("| scheme | s/step | ratio vs 1 GPU | s/step at 40 layers |\n|---|---|---|---|")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.3f} | {base / sec:.2f}x | {sec * 40 / cfg.num_layers:.2f} |")
    rel = float((out.float() - ref.float()).norm() / ref.float().norm())
    print(f"quality: Ulysses vs 1 GPU output relative difference {rel:.2e}")
    print(f"all-to-all: {a2a[0] / 1e6:.1f} MB per rank in {a2a[0] / a2a[1] / 1e9 * 1e3:.2f} ms "
          f"= {a2a[1]:.1f} GB/s effective | peak memory rank 0 {peak:.2f} GiB")


if __name__ == "__main__":
    main()
