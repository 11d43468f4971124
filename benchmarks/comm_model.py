"""Paper model of multi-GPU scaling for T2V-A14B: bytes per step per rank and predicted times.

Nothing here is measured. Bytes come from the shapes (`wanmoe.parallel.comm_model`); times
= official one-GPU time / N (the DiT work divides evenly over ranks for every scheme) + bytes /
an assumed effective link bandwidth, next to the official multi-GPU times. Prints markdown.

    python benchmarks/comm_model.py [--nvlink-gbs 360] [--pcie-gbs 12] [--rtx-slowdown 6]
"""

from __future__ import annotations

import argparse

from wanmoe.configs import T2V_A14B
from wanmoe.parallel.comm_model import (cfg_bytes, expert_bytes_per_video, fsdp_bytes,
                                        shapes_for, ulysses_bytes)

SIZES = {"480P": (832, 480), "720P": (1280, 720)}
# Official end-to-end seconds (T2V-A14B, 81 frames, 40 steps) as quoted in issue 14.
OFFICIAL = {"720P": {1: 1041.5, 4: 288.7, 8: 155.1}, "480P": {1: 326.9, 4: 91.7, 8: 51.5}}
STEPS = 40
GB = 1e9


def bytes_table(shapes) -> list[str]:
    rows = ["| size | tokens | N | Ulysses U=N | CFG x Ulysses U=N/2 | FSDP over N | expert (per video) |",
            "|---|---|---|---|---|---|---|"]
    for name, s in shapes.items():
        for n in (2, 4, 8):
            uly = ulysses_bytes(s, n, forwards=2)
            cfgu = ulysses_bytes(s, n // 2, forwards=1) + cfg_bytes(s)
            rows.append(f"| {name} | {s.tokens} | {n} | {uly / GB:.2f} GB | {cfgu / GB:.2f} GB | "
                        f"{fsdp_bytes(s, n, forwards=2) / GB:.1f} GB | "
                        f"{expert_bytes_per_video(s) / GB:.3f} GB |")
    return rows


def time_table(shapes, gbs: float, slowdown: float, counts) -> list[str]:
    rows = [f"| size | N | compute/N | Ulysses comm | predicted Ulysses | predicted CFG x Ulysses "
            f"| official |", "|---|---|---|---|---|---|---|"]
    for name, s in shapes.items():
        t1 = OFFICIAL[name][1] * slowdown
        for n in counts:
            comm_u = STEPS * ulysses_bytes(s, n, forwards=2) / (gbs * GB)
            comm_c = STEPS * (ulysses_bytes(s, n // 2, forwards=1) + cfg_bytes(s)) / (gbs * GB)
            off = OFFICIAL[name].get(n)
            rows.append(f"| {name} | {n} | {t1 / n:.1f} s | {comm_u:.1f} s | {t1 / n + comm_u:.1f} s"
                        f" | {t1 / n + comm_c:.1f} s | {f'{off} s' if off and slowdown == 1 else '-'} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nvlink-gbs", type=float, default=360.0,
                   help="effective all-to-all / all-gather GB/s per H100 over NVLink 4 (assumed)")
    p.add_argument("--pcie-gbs", type=float, default=12.0,
                   help="effective GB/s per RTX 4090 over PCIe 4.0 x16 without P2P (assumed)")
    p.add_argument("--rtx-slowdown", type=float, default=6.0,
                   help="RTX 4090 compute time / H100 compute time (peak bf16 989 vs 165 TFLOP/s)")
    a = p.parse_args()
    shapes = {name: shapes_for(T2V_A14B, w, h, T2V_A14B.frames) for name, (w, h) in SIZES.items()}
    print("## bytes sent per rank per denoise step (bf16 activations, 2 forwards per step)\n")
    print("\n".join(bytes_table(shapes)))
    print(f"\n## H100 NVLink ({a.nvlink_gbs:g} GB/s effective, assumed): whole run, 40 steps\n")
    print("\n".join(time_table(shapes, a.nvlink_gbs, 1.0, (2, 4, 8))))
    print(f"\n## RTX 4090 PCIe 4.0 ({a.pcie_gbs:g} GB/s effective, compute x{a.rtx_slowdown:g}, "
          f"assumed): whole run, 40 steps\n")
    print("\n".join(time_table(shapes, a.pcie_gbs, a.rtx_slowdown, (2, 4))))


if __name__ == "__main__":
    main()
