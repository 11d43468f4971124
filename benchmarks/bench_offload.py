"""Block streaming benchmark: resident DiT vs `--offload blocks:N`, same weights, same process.

GPU (default when CUDA is available): A14B width (dim 5120, 40 heads, ffn 13824), `--layers`
blocks (default 8), random bf16 weights, bf16 compute, 480P tokens (21x60x104 = 32,760) unless
`--grid`; median seconds per forward resident (baseline) and streamed (candidate), their ratio,
max |difference| (must be 0), peak device memory of each against `runtime.memory`'s prediction
(weights on the device + activations), and the PCIe bound (block bytes / measured copy rate).
`--smoke` runs the same code on the CPU with a tiny config (no speed meaning).
Run from the repository root: `PYTHONPATH=. python benchmarks/bench_offload.py [--layers N]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from wanmoe.configs import A14B_DIT, T2V_A14B, DiTConfig
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.memory import dit_activation_bytes
from wanmoe.runtime.streaming import BlockStreaming


def random_weights(cfg: DiTConfig, device, dtype, g: torch.Generator) -> WanDiT:
    """A WanDiT with random N(0, 1/fan_in) weights stored as a `dtype` run stores them
    (WanDiT.storage_dtype), allocated straight on `device` (no compute dtype set yet)."""
    with torch.device("meta"):
        model = WanDiT(cfg)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        t = torch.empty(p.shape, dtype=WanDiT.storage_dtype(name, dtype), device=device)
        t.normal_(0.0, (p.shape[-1] if p.dim() > 1 else 1) ** -0.5, generator=g)
        mod._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    return model


def build(cfg: DiTConfig, device, dtype) -> WanDiT:
    """Random weights in the storage layout of a `dtype` run (WanDiT.storage_dtype)."""
    g = torch.Generator(device=device).manual_seed(0)
    return random_weights(cfg, device, dtype, g).set_compute_dtype(dtype).eval()


def timed(fn, device, runs: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak(device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--resident", type=int, default=2, help="N of blocks:N")
    ap.add_argument("--grid", default="21,60,104", help="latent F,H,W")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if args.smoke:
        cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=args.layers, in_dim=16,
                        out_dim=16, text_dim=64, text_len=16)
        grid, dtype = (2, 8, 8), torch.float32
    else:
        cfg = dataclasses.replace(A14B_DIT, num_layers=args.layers)
        grid, dtype = tuple(int(x) for x in args.grid.split(",")), torch.bfloat16
    x = torch.randn(1, cfg.in_dim, *grid, device=device)
    t = torch.tensor([900.0], device=device)
    ctx = [torch.randn(min(100, cfg.text_len), cfg.text_dim, device=device)]
    model = build(cfg, device, dtype)
    tokens = grid[0] * grid[1] * grid[2] // 4
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base_s, ref = timed(lambda: model(x, t, ctx), device, args.runs)
        base_peak = peak(device)
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        policy = BlockStreaming({"m": model}, device, args.resident)
        policy.activate("m")
        cand_s, out = timed(lambda: model(x, t, ctx), device, args.runs)
        cand_peak = peak(device)
        block_bytes = sum(h.numel() * h.element_size() for h in policy.streamers["m"].host[0])
        policy.release()
    diff = (out.float() - ref.float()).abs().max().item()
    act = dit_activation_bytes(dataclasses.replace(T2V_A14B, dit=cfg), tokens, 1, dtype)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (smoke)'}; "
          f"{args.layers} blocks of dim {cfg.dim}, {tokens} tokens, {str(dtype)[6:]}")
    print(f"resident  {base_s:.3f} s/forward  peak {base_peak / 1e9:.2f} GB")
    print(f"blocks:{args.resident}  {cand_s:.3f} s/forward  peak {cand_peak / 1e9:.2f} GB  "
          f"(predicted weights {(args.resident * block_bytes) / 1e9:.2f} GB + non-block + "
          f"activations {act / 1e9:.2f} GB)")
    print(f"ratio streamed/resident {cand_s / base_s:.3f}; max |diff| {diff}; "
          f"block {block_bytes / 1e9:.3f} GB")


if __name__ == "__main__":
    main()
