"""runtime.memory: the activation model against traced real-size forwards and a measured CPU run.

Evidence 1 (meta trace): a forward of the real-size DiT (A14B: dim 5120, 40 heads, ffn 13824;
TI2V-5B) through its first two blocks (the second one is the repeated case) and the head, on the meta device, under `runtime.memtrace.LiveBytes`
(every tensor an op creates counted until its object dies). Attention is a flash-like stand-in
(output + log-sum-exp; no L x L matrix), as on a GPU. The prediction must be within 10 %.
Evidence 2 (CPU run): a small real forward in a fresh process; its peak-RSS growth over the
forward must match the prediction within 25 % (RSS sees allocator slack and thread buffers).
The CPU run uses the same flash-like attention stand-in (real tensors of the kernel's output
size): CPU SDPA's own workspace is not what a GPU run allocates, and is not modelled.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wanmoe.configs import T2V_A14B, TI2V_5B
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.memory import (MemoryRequest, dit_activation_bytes, expert_bytes, fits,
                                   gguf_bits_per_weight, predict)
from wanmoe.runtime.memtrace import LiveBytes, flash_like_attention

REPO = Path(__file__).resolve().parents[2]
SIZES = {"480P": (832, 480), "720P": (1280, 720)}


def traced_peak(preset, width, height, frames, dtype, batch=1, per_token_time=False) -> int:
    # Two blocks: block 0 takes the bf16 patch tokens, every later block the fp32 residual
    # stream (4 bytes a value more held across the call): the second block is the one all 39
    # later blocks of A14B repeat. The head runs after it.
    cfg = dataclasses.replace(preset.dit, num_layers=2)
    st, sh, sw = preset.vae.stride
    with torch.device("meta"):
        model = WanDiT(cfg).set_compute_dtype(dtype).set_per_token_time(per_token_time)
        for block in model.blocks:
            block.self_attn.attn_fn = block.cross_attn.attn_fn = flash_like_attention
        x = torch.empty(batch, cfg.in_dim, (frames - 1) // st + 1, height // sh, width // sw)
        t = torch.full((batch,), 900.0)
        ctx = [torch.empty(60, cfg.text_dim) for _ in range(batch)]
    with torch.no_grad(), LiveBytes() as trace:
        model(x, t, ctx)
    return trace.peak


@pytest.mark.parametrize("size", ["480P", "720P"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a14b_activation_peak_matches_the_trace(size, dtype):
    w, h = SIZES[size]
    req = MemoryRequest(T2V_A14B, w, h, 81, dtype=dtype)
    assert req.tokens == {"480P": 32760, "720P": 75600}[size]
    traced = traced_peak(T2V_A14B, w, h, 81, dtype)
    predicted = dit_activation_bytes(T2V_A14B, req.tokens, 1, dtype)
    assert abs(predicted - traced) / traced < 0.10, (predicted, traced)
    if dtype == torch.bfloat16:  # the measured peaks: 6.4 GB at 480P, 14.8 GB at 720P
        assert abs(traced / 1e9 - {"480P": 6.4, "720P": 14.8}[size]) < 0.1


@pytest.mark.parametrize("case", ["batched_cfg", "per_token_time", "ti2v_fp32"])
def test_activation_peak_other_settings(case):
    preset, dtype, batch, ptt = T2V_A14B, torch.bfloat16, 1, False
    if case == "batched_cfg":
        batch = 2
    elif case == "per_token_time":
        ptt = True
    else:
        preset, dtype = TI2V_5B, torch.float32
    w, h = SIZES["480P"]
    frames = 81 if preset is T2V_A14B else 121
    traced = traced_peak(preset, w, h, frames, dtype, batch, ptt)
    tokens = MemoryRequest(preset, w, h, frames).tokens
    predicted = dit_activation_bytes(preset, tokens, batch, dtype, ptt)
    assert abs(predicted - traced) / traced < 0.10, (case, predicted, traced)


def test_weight_bytes_per_format():
    non_block, block = expert_bytes(T2V_A14B, "bf16")
    assert abs((non_block + 40 * block) / 1e9 - 28.95) < 0.05  # one bf16 expert (issue 12)
    assert gguf_bits_per_weight("Q8_0") == 8.5 and gguf_bits_per_weight("Q4_K") == 4.5
    sizes = [expert_bytes(T2V_A14B, f)[1] for f in ("bf16", "Q8_0", "fp8", "Q6_K", "Q5_K_M",
                                                     "Q4_K_M", "Q3_K_M")]
    assert sizes == sorted(sizes, reverse=True)


def test_offload_modes_order_and_fit():
    preds = {m: predict(MemoryRequest(T2V_A14B, 832, 480, 81, "bf16", m, text_on_device=False))
             for m in ("none", "expert", "blocks")}
    assert preds["none"].vram_peak > preds["expert"].vram_peak > preds["blocks"].vram_peak
    # host RAM with offload: both bf16 experts + umT5 (~70 GB, issue 12)
    assert 65e9 < preds["expert"].ram_peak < 75e9
    ok, reason = fits(preds["blocks"], 12 * 2**30)
    assert ok, reason
    ok, reason = fits(preds["none"], 24 * 2**30)
    assert not ok and "VRAM" in reason


CHILD = r"""
import dataclasses, sys, torch
torch.set_num_threads(1)
from wanmoe.configs import T2V_A14B
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.memory import dit_activation_bytes
from wanmoe.runtime.memtrace import flash_like_attention
cfg = dataclasses.replace(T2V_A14B.dit, dim=512, num_heads=4, ffn_dim=1382, num_layers=2)
def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
model = WanDiT(cfg).eval()
for block in model.blocks:
    block.self_attn.attn_fn = block.cross_attn.attn_fn = flash_like_attention
x = torch.randn(1, 16, 4, 32, 64)  # patch (1, 2, 2): 4 x 16 x 32 = 2048 tokens
ctx = [torch.randn(40, cfg.text_dim)]
t = torch.tensor([900.0])
with torch.no_grad():
    model(x[:, :, :1, :8, :8], t, ctx)  # warm-up: kernels, thread pools
    open("/proc/self/clear_refs", "w").write("5")
    before = kib("VmRSS")
    model(x, t, ctx)
    peak = kib("VmHWM")
tokens = 4 * 16 * 32
preset = dataclasses.replace(T2V_A14B, dit=cfg)
print(peak - before, dit_activation_bytes(preset, tokens, 1, torch.float32))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cpu_forward_peak_matches_the_prediction():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # every tensor-sized block its own mmap, returned at free: RSS then follows live
           # bytes instead of glibc's heap high-water mark
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    measured, predicted = map(int, out.stdout.split())
    print(f"CPU forward: measured peak RSS growth {measured} B, predicted {predicted} B")
    assert abs(measured - predicted) / predicted < 0.25, (measured, predicted)


def test_auto_offload_picks_the_first_mode_that_fits():
    from wanmoe.runtime.memory import auto_offload

    gib = 2**30
    # both bf16 A14B experts (57.9 GB) + 720P activations + umT5 fit 141 GB, not 80 GB
    assert auto_offload(T2V_A14B, 141 * gib, torch.bfloat16, "bf16") == ("none", 2)
    assert auto_offload(T2V_A14B, 80 * gib, torch.bfloat16, "bf16") == ("expert", 2)
    assert auto_offload(T2V_A14B, 80 * gib, torch.bfloat16, "fp8") == ("none", 2)
    assert auto_offload(T2V_A14B, 24 * gib, torch.bfloat16, "bf16", 3) == ("blocks", 3)


def test_resolve_offload_on_cpu_follows_the_explicit_mode():
    from wanmoe.request import runtime_config
    from wanmoe.runtime.offload import resolve_offload

    assert resolve_offload(runtime_config("cpu", offload="blocks:3"), T2V_A14B) == (True, 3)
    assert resolve_offload(runtime_config("cpu", offload="expert"), T2V_A14B) == (False, None)
    assert resolve_offload(runtime_config("cpu"), T2V_A14B) == (False, None)


@pytest.mark.parametrize("preset, size, tile", [(T2V_A14B, (832, 480), None),
                                                (T2V_A14B, (1280, 720), (30, 52, 8)),
                                                (TI2V_5B, (1280, 704), None)])
def test_vae_decode_peak_matches_the_trace(preset, size, tile):
    # The causal decode runs one latent frame at a time: 3 latent frames (9 video frames) show
    # the steady state (21 latent frames traced the same bytes per pixel, docs/memory.md).
    from wanmoe.runtime.memory import vae_decode_bytes
    from wanmoe.vae import build_vae
    from wanmoe.vae.tiling import TileSpec

    w, h = size
    _, sh, sw = preset.vae.stride
    with torch.device("meta"):
        vae = build_vae(preset.vae)
        z = torch.empty(1, preset.vae.z_dim, 3, h // sh, w // sw)
    with torch.no_grad(), LiveBytes() as trace:
        out = vae.decode(z, tiling=None if tile is None else TileSpec(*tile))
    predicted = vae_decode_bytes(preset, w, h, out.shape[2], tile)
    assert abs(predicted - trace.peak) / trace.peak < 0.10, (predicted, trace.peak)
