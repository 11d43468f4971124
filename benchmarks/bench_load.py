"""Load time and peak RSS: streaming `load_dit` (fp32 file -> bf16) vs a naive load.

Naive baseline: `safetensors.torch.load_file` + `WanDiT(cfg)` (random init) + `load_state_dict`
+ `.to(torch.bfloat16)`. Candidate: `wanmoe.loading.components.load_dit(path, cfg, bf16)`
(meta build, per-tensor read + cast). Each run is a fresh subprocess so peak RSS (VmHWM, reset
right before the load) belongs to that run alone; the first run of each is a discarded warm-up
that also fills the page cache. Usage: python benchmarks/bench_load.py [--layers 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, sys, time, torch
    from wanmoe.configs import DiTConfig
    cfg = DiTConfig(**json.loads(sys.argv[3]))
    def kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    from wanmoe.models.dit import WanDiT
    from wanmoe.loading.components import load_dit
    from safetensors.torch import load_file
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = kb("VmRSS:")
    t0 = time.perf_counter()
    if sys.argv[1] == "naive":
        sd = load_file(sys.argv[2])
        m = WanDiT(cfg)
        m.load_state_dict(sd)
        m = m.to(torch.bfloat16)
        del sd
    else:
        m = load_dit(sys.argv[2], cfg, torch.bfloat16)
    dt = time.perf_counter() - t0
    resident = sum(p.numel() * p.element_size() for p in m.parameters())
    print(json.dumps({"s": dt, "peak_mb": (kb("VmHWM:") - base) / 1024, "weights_mb": resident / 2**20}))
""")


def run(mode: str, path: Path, cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), json.dumps(cfg)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from safetensors.torch import save_file

    from wanmoe.configs import DiTConfig
    from wanmoe.models.dit import WanDiT

    cfg = {"dim": 1024, "ffn_dim": 4096, "num_heads": 8, "num_layers": args.layers, "in_dim": 16, "out_dim": 16}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dit_fp32.safetensors"
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in WanDiT(DiTConfig(**cfg)).state_dict().items()}
        save_file({k: torch.randn(s) for k, s in shapes.items()}, path)
        size_mb = path.stat().st_size / 2**20
        res = {}
        for mode in ("naive", "stream"):
            run(mode, path, cfg)  # warm-up
            res[mode] = [run(mode, path, cfg) for _ in range(args.runs)]
    hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"hardware: 2-core CPU dev box ({hw}); file: {size_mb:.0f} MB fp32 -> bf16; {args.runs} runs, median")
    print(f"{'mode':8} {'time s':>8} {'peak RSS MB':>12} {'weights MB':>11}")
    med = {}
    for mode, rs in res.items():
        med[mode] = (statistics.median(r["s"] for r in rs), statistics.median(r["peak_mb"] for r in rs))
        print(f"{mode:8} {med[mode][0]:8.2f} {med[mode][1]:12.0f} {rs[0]['weights_mb']:11.0f}")
    print(f"ratio naive/stream: time {med['naive'][0] / med['stream'][0]:.2f}x, "
          f"peak RSS {med['naive'][1] / med['stream'][1]:.2f}x")


if __name__ == "__main__":
    main()
