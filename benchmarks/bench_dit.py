"""DiT forward benchmark: wanmoe WanDiT vs diffusers WanTransformer3DModel, same weights.

CPU (default): fp32, a small and a medium config, median of a few runs, ratio diffusers/ours.
GPU (`--gpu`, or automatically when CUDA is available): real A14B width (dim 5120, 40 heads,
ffn 13824, `--layers N`, default 40), random weights created directly on the GPU in the bf16
storage layout (`WanDiT.storage_dtype`), bf16 compute; time per forward at 480P (latent
21x60x104 = 32,760 tokens) and 720P (21x90x160 = 75,600 tokens), achieved TFLOP/s and peak
memory; diffusers in bf16 on the same (shared) weights as the baseline unless `--no-baseline`.
`--smoke` runs the GPU code path on CPU with a tiny config so it stays exercised.
Run from the repository root: `PYTHONPATH=. python benchmarks/bench_dit.py [--gpu] [--layers N]`.

FLOPs per forward (B=1, multiply-add = 2 FLOPs; L tokens, Lt = text_len, d, f = ffn_dim):
  blocks: layers * (8 L d^2 [self q,k,v,o] + 4 L^2 d [self QK^T, PV] + 4 L d^2 [cross q,o]
                    + 4 Lt d^2 [cross k,v] + 4 L Lt d [cross QK^T, PV] + 4 L d f [FFN])
  + 2 L d (C_in * 4) [patch] + 2 Lt (text_dim d + d^2) [text MLP] + 2 L d (C_out * 4) [head]
  + 2 (freq_dim d + d^2 + 6 d^2) [time MLPs, once per sample: all tokens share t]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import time

import torch

from wanmoe.configs import A14B_DIT, DiTConfig
from wanmoe.loading.keymaps.dit import official_to_diffusers
from wanmoe.models.dit import WanDiT
from wanmoe.plan import dit_flops  # the one analytic FLOP count (formula above)

CPU_SIZES = {  # name: (config, latent grid F, H, W)
    "small": (DiTConfig(dim=256, ffn_dim=768, num_heads=4, num_layers=2, in_dim=16, out_dim=16,
                        text_dim=256, text_len=64), (3, 16, 16)),
    "medium": (DiTConfig(dim=512, ffn_dim=1536, num_heads=8, num_layers=4, in_dim=16, out_dim=16,
                         text_dim=512, text_len=128), (5, 24, 32)),
}
GPU_GRIDS = {"480P": (21, 60, 104), "720P": (21, 90, 160)}
SMOKE_GRIDS = {"smoke": (2, 6, 8)}


def materialize_(model: torch.nn.Module, device, dtype_of, seed: int = 0) -> torch.nn.Module:
    """Replace every (meta) parameter by a random one created on `device` in dtype_of(name)."""
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        t = torch.empty(p.shape, dtype=dtype_of(name), device=device)
        if leaf == "weight" and "norm" in name:
            t.fill_(1.0)
        elif leaf == "bias":
            t.zero_()
        else:
            fan_in = p[0].numel() if p.dim() > 1 and "modulation" not in name else p.shape[-1]
            t.normal_(0.0, fan_in**-0.5, generator=g)
        mod._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    return model


def diffusers_twin(ours: WanDiT, dtype: torch.dtype, device):
    """diffusers model sharing `ours`'s tensors (renamed; cast only where its dtype differs)."""
    from diffusers import WanTransformer3DModel

    cfg = ours.cfg
    with torch.device("meta"):
        ref = WanTransformer3DModel(
            patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
            ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=cfg.eps)
    keep = ref._keep_in_fp32_modules  # diffusers' own fp32 islands when run in bf16
    sd = {}
    for k, v in ours.state_dict().items():
        name = official_to_diffusers(k)
        want = torch.float32 if dtype == torch.float32 or any(m in name for m in keep) else dtype
        sd[name] = v.to(want)
    ref.load_state_dict(sd, strict=True, assign=True)
    ref.rope = type(ref.rope)(cfg.head_dim, cfg.patch_size, 1024).to(device)  # buffers were on meta
    return ref.eval()


def timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_times(fns, runs: int, cuda: bool) -> list[float]:
    """One warm-up each, then `runs` rounds alternating the candidates (fair under shared CPUs)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            ts.append(timed(fn, cuda))
    return [statistics.median(ts) for ts in times]


def inputs(cfg: DiTConfig, grid, device, dtype_ctx):
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *grid, generator=g, device=device)
    ctx = torch.randn(cfg.text_len, cfg.text_dim, generator=g, device=device).to(dtype_ctx)
    return x, torch.tensor([875], device=device), ctx


@torch.no_grad()
def run_cpu(args) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, fp32")
    print("| size | config | tokens | diffusers s | wanmoe s | diffusers/wanmoe | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    for name, (cfg, grid) in CPU_SIZES.items():
        ours = WanDiT(cfg).eval()
        ref = diffusers_twin(ours, torch.float32, "cpu")
        x, t, ctx = inputs(cfg, grid, "cpu", torch.float32)
        a = ours(x, t, [ctx])
        b = ref(x, t, ctx[None]).sample
        t_ours, t_ref = median_times([lambda: ours(x, t, [ctx]), lambda: ref(x, t, ctx[None])], args.runs, False)
        tokens = math.prod(grid) // 4
        err = ((a - b).abs().max() / b.abs().max()).item()
        desc = f"d{cfg.dim} h{cfg.num_heads} ffn{cfg.ffn_dim} x{cfg.num_layers}"
        print(f"| {name} | {desc} | {tokens} | {t_ref:.3f} | {t_ours:.3f} | {t_ref / t_ours:.2f} | {err:.1e} |")


@torch.no_grad()
def run_gpu(args) -> None:
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    cuda = device == "cuda"
    if args.smoke:
        cfg, grids = DiTConfig(dim=96, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                               text_dim=32, text_len=16), SMOKE_GRIDS
    else:
        cfg, grids = dataclasses.replace(A14B_DIT, num_layers=args.layers), GPU_GRIDS
    name = torch.cuda.get_device_name() if cuda else f"CPU smoke ({platform.machine()})"
    print(f"device: {name}; DiT d{cfg.dim} h{cfg.num_heads} ffn{cfg.ffn_dim} layers {cfg.num_layers}; "
          f"bf16 compute, bf16-region weights stored bf16")
    with torch.device("meta"):
        ours = WanDiT(cfg)
    materialize_(ours, device, lambda n: WanDiT.storage_dtype(n, torch.bfloat16))
    ours.set_compute_dtype(torch.bfloat16).eval()
    ref = None if args.no_baseline else diffusers_twin(ours, torch.bfloat16, device)
    print("| grid | tokens | wanmoe s | TFLOP/s | peak GiB | diffusers s | diffusers/wanmoe | max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for label, grid in grids.items():
        x, t, ctx = inputs(cfg, grid, device, torch.bfloat16)
        tokens = math.prod(grid) // 4
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        (t_ours,) = median_times([lambda: ours(x, t, [ctx])], args.runs, cuda)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        tflops = dit_flops(cfg, tokens) / t_ours / 1e12
        base = "-", "-", "-"
        if ref is not None:
            # Quality column: diffusers' bf16 numerics differ from the official ones (residual
            # stream and time_proj in bf16, fp32 RoPE), so this is a drift figure, not an error.
            a, b = ours(x, t, [ctx]), ref(x.bfloat16(), t, ctx[None]).sample.float()
            err = ((a - b).abs().max() / b.abs().max()).item()
            del a, b
            (t_ref,) = median_times([lambda: ref(x.bfloat16(), t, ctx[None])], args.runs, cuda)
            base = f"{t_ref:.3f}", f"{t_ref / t_ours:.2f}", f"{err:.1e}"
        print(f"| {label} {grid} | {tokens} | {t_ours:.3f} | {tflops:.1f} | {peak:.2f} | "
              f"{base[0]} | {base[1]} | {base[2]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="A14B-width bf16 benchmark (default with CUDA)")
    ap.add_argument("--cpu", action="store_true", help="force the CPU fp32 comparison even with CUDA present")
    ap.add_argument("--smoke", action="store_true", help="run the GPU code path on CPU with a tiny config")
    ap.add_argument("--layers", type=int, default=40, help="DiT layers in GPU mode (A14B has 40)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--no-baseline", action="store_true", help="GPU mode: skip the diffusers baseline")
    args = ap.parse_args()
    if args.smoke or ((args.gpu or torch.cuda.is_available()) and not args.cpu):
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
