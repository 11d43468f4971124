"""VAE decode benchmark: wanmoe WanVAE21/WanVAE22 vs diffusers AutoencoderKLWan, same random weights.

Per (VAE, resolution): median decode time per latent frame and peak decode memory, baseline
(diffusers) and candidate (ours) in the same process, with their ratio and the max output
difference; then ours tiled vs untiled (max abs diff, PSNR, peak memory).

Real VAE widths (Wan2.1: 96, Wan2.2: 160/256). On CUDA the real 480P/720P sizes are used and memory
is `torch.cuda.max_memory_allocated` above the pre-decode allocation. On CPU the spatial size is
reduced (`--scale`, default 1/16; tiling runs `--tile-scale`, default 1/8; rounded down to the
VAE stride) and memory is the peak-RSS increase over the pre-decode RSS (Linux
/proc/self/clear_refs + VmHWM; freed memory is returned with malloc_trim between runs, so later
runs are not flattered by memory kept from earlier ones).

    python benchmarks/bench_vae.py --threads 1        # CPU, reduced size, ~2 min CPU time
    python benchmarks/bench_vae.py --device cuda --latent-frames 21
"""

from __future__ import annotations

import argparse
import ctypes
import math
import platform
import statistics
import time

import torch

from wanmoe.configs import WAN21_VAE, WAN22_VAE
from wanmoe.loading.keymaps.vae import official_to_diffusers
from wanmoe.vae import TileSpec, build_vae

SIZES = {"480P": (832, 480), "720P": (1280, 720)}


def reduced(size: int, scale: float, stride: int) -> int:
    return max(stride, int(size * scale) // stride * stride)


class PeakMemory:
    """Peak memory of a block above its starting point, in MiB (CUDA allocator or process RSS)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, 0.0

    @staticmethod
    def _kib(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
        return 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:  # not glibc: freed memory may stay in the process, peaks read higher
                pass
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.base = self._kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._kib("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def timed(fn, device, repeats: int):
    """(median wall seconds, median process-CPU seconds, peak MiB of the last run, result).
    CPU time is reported because the shared CPU box's wall time depends on other processes."""
    times, cpu, mem, out = [], [], 0.0, None
    for _ in range(repeats):
        out = None
        with PeakMemory(device) as pm:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        mem = pm.mib
    return statistics.median(times), statistics.median(cpu), mem, out


def diffusers_twin(vae, device):
    from diffusers import AutoencoderKLWan

    cfg = vae.cfg
    kw = dict(base_dim=cfg.dim, z_dim=cfg.z_dim, latents_mean=list(cfg.mean), latents_std=list(cfg.std))
    if cfg.version == "2.2":
        kw.update(decoder_base_dim=cfg.dec_dim, is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_spatial=16)
    with torch.device("meta"):
        ref = AutoencoderKLWan(**kw)
    sd = {official_to_diffusers(k, cfg.version): v for k, v in vae.state_dict().items()}
    ref.load_state_dict(sd, strict=True, assign=True)  # shares our tensors: no second copy
    return ref.to(device).eval()


def per_frame_ms(frames: int):
    """Formatter of a decode time as milliseconds per latent frame."""
    return lambda t: f"{t / frames * 1e3:.0f}"


def psnr(a, b) -> float:
    mse = ((a - b) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # [-1, 1] video: peak-to-peak 2


def latent(vae, w, h, frames, device):
    s = vae.cfg.stride[1]
    torch.manual_seed(0)
    return torch.randn(1, vae.cfg.z_dim, frames, h // s, w // s, device=device)


def bench_compare(vae, ref, res, w, h, frames, device, repeats) -> None:
    """diffusers (baseline) vs ours (candidate), untiled."""
    z = latent(vae, w, h, frames, device)
    with torch.no_grad():
        t_ref, c_ref, m_ref, y_ref = timed(lambda: ref.decode(vae.denormalize(z)).sample, device, repeats)
        y_ref = y_ref.cpu()
        t_ours, c_ours, m_ours, y = timed(lambda: vae.decode(z), device, repeats)
        diff = ((y.cpu() - y_ref).abs().max() / y_ref.abs().max()).item()
    ms = per_frame_ms(frames)
    print(f"| Wan{vae.cfg.version} | {res} | {w}x{h} | {frames} | {ms(t_ref)} / {ms(c_ref)} | "
          f"{ms(t_ours)} / {ms(c_ours)} | {t_ref / t_ours:.2f} / {c_ref / c_ours:.2f} | {m_ref:.0f} | "
          f"{m_ours:.0f} | {diff:.1e} |")


def bench_tiling(vae, res, w, h, frames, device) -> str:
    """Ours untiled vs about 2x2 latent tiles with overlap 2."""
    z = latent(vae, w, h, frames, device)
    hl, wl = z.shape[3], z.shape[4]
    spec = TileSpec(max(hl // 2 + 2, 5), max(wl // 2 + 2, 5), 2)
    with torch.no_grad():
        t_full, _, m_full, y = timed(lambda: vae.decode(z), device, 1)
        t_tile, _, m_tile, y_t = timed(lambda: vae.decode(z, tiling=spec), device, 1)
        err, p = (y_t - y).abs().max().item(), psnr(y_t, y)
    ms = per_frame_ms(frames)
    return (f"| Wan{vae.cfg.version} | {res} | {w}x{h} | {frames} | {spec.tile_latent_h}x{spec.tile_latent_w}/"
            f"{spec.overlap_latent} | {m_full:.0f} | {m_tile:.0f} | {m_tile / m_full:.2f} | {ms(t_full)} | "
            f"{ms(t_tile)} | {err:.2e} | {p:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=None, help="spatial scale (default 1 on CUDA, 1/16 on CPU)")
    ap.add_argument("--tile-scale", type=float, default=None, help="spatial scale of the tiling runs "
                    "(default 1 on CUDA, 1/8 on CPU)")
    ap.add_argument("--latent-frames", type=int, default=None, help="default 21 on CUDA, 2 on CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after warm-up (default 3 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--versions", default="2.1,2.2")
    ap.add_argument("--tile-versions", default=None,
                    help="VAEs for the tiling runs (default all on CUDA, 2.1 on CPU: at CPU-sized frames the "
                         "2.2 latent is only a few tiles wide and weight-reorder temporaries dominate its peak)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    scale = args.scale or (1.0 if cuda else 1 / 16)
    tile_scale = args.tile_scale or (1.0 if cuda else 1 / 8)
    frames = args.latent_frames or (21 if cuda else 2)
    repeats = args.repeats or (3 if cuda else 1)
    tile_versions = (args.tile_versions or (args.versions if cuda else "2.1")).split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = (torch.cuda.get_device_name(device) if cuda
          else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads")
    print(f"# VAE decode, {hw}; torch {torch.__version__}; scale {scale:g}, {frames} latent frames, "
          f"median of {repeats} after warm-up\n")
    print("| VAE | res | WxH | latent F | diffusers ms/latent frame (wall / CPU) | ours ms/latent frame "
          "(wall / CPU) | speed-up (wall / CPU) | diffusers peak MiB | ours peak MiB | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tiles = []
    for version in args.versions.split(","):
        cfg = WAN21_VAE if version == "2.1" else WAN22_VAE
        torch.manual_seed(0)
        vae = build_vae(cfg).to(device).eval()
        ref = diffusers_twin(vae, device)
        s = cfg.stride[1]
        with torch.no_grad():  # warm-up (kernel selection, allocator) at a tiny size
            vae.decode(torch.zeros(1, cfg.z_dim, 2, 2, 2, device=device))
            ref.decode(torch.zeros(1, cfg.z_dim, 2, 2, 2, device=device))
        for res, (w, h) in SIZES.items():
            bench_compare(vae, ref, res, reduced(w, scale, s), reduced(h, scale, s), frames, device, repeats)
        del ref
        for res, (w, h) in SIZES.items() if version in tile_versions else ():
            tiles.append(bench_tiling(vae, res, reduced(w, tile_scale, s), reduced(h, tile_scale, s),
                                      frames, device))
        del vae
    print(f"\nOurs tiled vs untiled (scale {tile_scale:g}, wall time):\n")
    print("| VAE | res | WxH | latent F | tile HxW/overlap (latent) | untiled peak MiB | tiled peak MiB | "
          "tiled/untiled memory | untiled ms/latent frame | tiled ms/latent frame | max abs diff | PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(tiles))


if __name__ == "__main__":
    main()
