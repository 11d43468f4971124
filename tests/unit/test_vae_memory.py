"""Chunked decode memory does not grow with the clip length (spec §6.5: one latent frame at a time).

What is measured: each decode runs in a fresh Python process. After building the model (tiny
width 4, where per-frame activations dominate: 4-channel 96x96 frames), creating the latent and
the preallocated, zero-filled output, the process resets its peak-RSS counter
(/proc/self/clear_refs = 5) and reads VmRSS; after `decode(z, out=out)` it reads VmHWM. The
difference is the decode working memory (activations + causal cache + allocator slack), without
the output video, whose size is proportional to the frame count by definition.
The whole-clip path (`chunked=False`) is measured the same way as a control: its memory must grow,
which shows the measurement can see growth.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, torch
torch.set_num_threads(1)
from wanmoe.configs import VAEConfig, WAN21_VAE_MEAN, WAN21_VAE_STD
from wanmoe.vae import build_vae
f, chunked = int(sys.argv[1]), sys.argv[2] == "1"
def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
torch.manual_seed(0)
cfg = VAEConfig(version="2.1", dim=4, dec_dim=4, z_dim=16, mean=WAN21_VAE_MEAN, std=WAN21_VAE_STD)
vae = build_vae(cfg).eval()
z = torch.randn(1, 16, f, 12, 12)
out = torch.zeros(1, 3, 1 + 4 * (f - 1), 96, 96)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak-RSS counter to the current RSS
base = kib("VmRSS")
with torch.no_grad():
    vae.decode(z, chunked=chunked, out=out)
print((kib("VmHWM") - base) / 1024)
"""


def _peak_mib(runs: list[tuple[int, bool]]) -> list[float]:
    """Decode working memory (MiB) of each (latent frames, chunked) run, one fresh process each
    (started together: they are independent and mostly wait on `import torch`)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(f), "1" if c else "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f, c in runs]
    peaks = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        peaks.append(float(out.strip().splitlines()[-1]))
    return peaks


@pytest.mark.slow  # four fresh Python processes (about 15 s on an idle 2-core box)
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_decode_memory_is_flat_in_frames():
    short, long, full_short, full_long = _peak_mib([(5, True), (21, True), (5, False), (13, False)])
    print(f"\ndecode working memory (MiB): chunked 5 latent frames {short:.1f}, 21 frames {long:.1f} "
          f"(x{long / short:.2f}); whole-clip control {full_short:.1f} -> {full_long:.1f} "
          f"(x{full_long / full_short:.2f})")
    assert short > 10  # activations really dominate the measurement (not allocator noise)
    assert long <= 1.3 * short
    assert full_long > 1.3 * full_short  # the measurement does see growth when there is growth
