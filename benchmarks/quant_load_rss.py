"""Peak host RSS of loading one DiT expert with `--weights fp8|int8`: quantised while loading
(`runtime.quant.on_load`, today) against load-then-quantise (the path before it).

Writes a mid-size DiT (default dim 1536, ffn 6144, 12 blocks: 0.47 G parameters, 0.93 GB as
bf16 safetensors with official names) into a temporary folder, then loads it once per
(path, weights) in a fresh subprocess on the CPU with bf16 compute (block linears stored bf16,
as the A14B runs) and reports the process's peak RSS (`VmHWM`) and its RSS before the load
(torch imported), side by side with the sizes of the float and the quantised expert.

Run from the repository root: `PYTHONPATH=. python benchmarks/quant_load_rss.py [--dim N]
[--ffn N] [--layers N] [--json FILE]`. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, types, torch
path, weights, mode, dim, ffn, layers = sys.argv[1:7]
from wanmoe.configs import DiTConfig
cfg = DiTConfig(dim=int(dim), ffn_dim=int(ffn), num_heads=int(dim) // 128, num_layers=int(layers),
                in_dim=16, out_dim=16)
from wanmoe.pipeline import _load_expert
from wanmoe.request import runtime_config
from wanmoe.runtime.quant import on_load
from wanmoe.runtime.quant.apply import quantize_model, quantized_bytes

if mode == "old":  # the path before on-load quantisation: float expert, then quantize_model
    class Old(on_load.OnLoadQuantiser):
        def plan(self, name, shape):
            return None
        def finish(self, model):
            return quantize_model(model, self.mode)
    on_load.OnLoadQuantiser = Old
def rss(field="VmRSS:"):  # VmHWM: the peak of this process image (ru_maxrss keeps the parent's
    for line in open("/proc/self/status"):  # RSS from before the exec when that was larger)
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0
spec = types.SimpleNamespace(experts={"dense": path}, preset=types.SimpleNamespace(dit=cfg))
rt = runtime_config("cpu", "bf16", weights=weights)
before = rss()
model = _load_expert(spec, "dense", rt, torch.device("cpu"))
peak = rss("VmHWM:")
print(before, peak, rss(), quantized_bytes(model))
"""


def write_model(folder: Path, dim: int, ffn: int, layers: int) -> tuple[Path, int]:
    """Random bf16 weights (float32 where the DiT stores fp32) under the official names."""
    import torch
    from safetensors.torch import save_file

    from wanmoe.configs import DiTConfig
    from wanmoe.loading.stream import empty_weights
    from wanmoe.models.dit import WanDiT

    cfg = DiTConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers, in_dim=16, out_dim=16)
    with empty_weights():
        model = WanDiT(cfg)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, p in model.state_dict().items():
        dt = WanDiT.storage_dtype(name, torch.bfloat16)
        sd[name] = (torch.randn(p.shape, generator=g) * 0.02).to(dt)
    path = folder / "expert.safetensors"
    save_file(sd, str(path))
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    del sd  # the children load it; this process holds nothing large while they run
    return path, nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--ffn", type=int, default=6144)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, float_bytes = write_model(Path(tmp), a.dim, a.ffn, a.layers)
        print(f"model dim {a.dim}, ffn {a.ffn}, {a.layers} blocks: file {path.stat().st_size / 1e9:.3f} GB "
              f"(float expert {float_bytes / 1e9:.3f} GB)")
        print(f"{'weights':8} {'path':22} {'RSS before':>11} {'peak RSS':>9} {'peak - before':>14} "
              f"{'RSS after':>10} {'quantised expert':>17}")
        for weights in ("fp8", "int8"):
            for mode in ("old", "new"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), weights, mode, str(a.dim),
                                      str(a.ffn), str(a.layers)], check=True, capture_output=True, text=True)
                before, peak, after, qbytes = map(int, out.stdout.split()[-4:])
                label = "load-then-quantise" if mode == "old" else "quantise-while-loading"
                rows.append({"weights": weights, "path": label, "rss_before": before, "rss_peak": peak,
                             "rss_after": after, "quantised_bytes": qbytes, "float_bytes": float_bytes})
                print(f"{weights:8} {label:22} {before / 1e9:10.3f}G {peak / 1e9:8.3f}G "
                      f"{(peak - before) / 1e9:13.3f}G {after / 1e9:9.3f}G {qbytes / 1e9:16.3f}G")
    if a.json:
        a.json.write_text(json.dumps({"dim": a.dim, "ffn": a.ffn, "layers": a.layers, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
