"""The memory planner: predicted peak device memory and host RAM of a generation.

Everything is computed from the model's dims (no checkpoint, no allocation). The model and
its evidence are in docs/memory.md; in short, with u = B * L * d bytes-per-element units
(B batch, L tokens, d hidden size, w = 2 for a bf16 run, 4 for fp32, r = ffn_dim / d):

* DiT activations: the largest phase of a block (read off the block's forward and checked
  against a live-byte trace of the real-size block, `runtime.memtrace`). From CHUNK_THRESHOLD
  tokens on the block runs chunked (`WanBlock.forward_chunked`, chunks of c tokens, bcd = B c d):
    q/k/v projections   3 w u + (w + 16) bcd        attention   4 w u
    o projection        (4 + w) u + 12 bcd
  below it (or with chunking off) the whole sequence at once:
    self-attention   24 u + 8 B c d       (c = RoPE chunk: its float64 copy, rotated in place)
    cross-attention  26 u (bf16) | 20 u + 8 B T d (fp32)      (T = text_len)
    FFN              (8 + w [bf16] + 2 w r) u
  plus what the forward holds across blocks: the patch tokens (w u) and the block input (4 u),
  the RoPE table (L * hd * 8), the text context (B T d w), and with per-token time the fp32
  e / e0 tensors (28 u; whole-sequence also the block's modulation sum, 24 u).
* Weights: per format, the block linears at their storage type (GGUF: bits per weight from the
  block sizes of `quant.gguf_dequant.QUANT_SIZES`), everything else at `WanDiT.storage_dtype`.
* Stages run one after another; the peak is the largest of load, text encode, denoise, decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from wanmoe.configs import ModelPreset
from wanmoe.models.layers import CHUNK_THRESHOLD, CHUNK_TOKENS
from wanmoe.runtime.quant.estimate import dit_entries, tensor_bytes, tensor_types

WEIGHT_FORMATS = ("bf16", "fp8", "int8", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M")
OFFLOAD_MODES = ("none", "expert", "blocks")
ROPE_CHUNK = 4096  # models.rope._CHUNK_TOKENS: tokens rotated at a time
PROCESS_BASE = int(1.5e9)  # host RAM of the Python process with torch (+ CUDA libraries) loaded
CUDA_CONTEXT = int(0.6e9)  # device memory the CUDA context and kernels take before any tensor
# VAE decode working memory per output pixel of the decoded area (frame or tile): traced on the
# meta device (tests/unit/test_memory_model.py); it does not grow with the clip length.
VAE_BYTES_PER_PIXEL = {16: 17_250, 48: 17_470}  # z_dim 16: Wan2.1 VAE; 48: Wan2.2 VAE


@dataclass(frozen=True)
class MemoryRequest:
    """What a run asks for: model, size, weights, offload and precision choices."""

    preset: ModelPreset
    width: int
    height: int
    frames: int
    weights: str = "bf16"  # one of WEIGHT_FORMATS (or "fp32")
    offload: str = "none"  # one of OFFLOAD_MODES
    resident_blocks: int = 2
    dtype: torch.dtype = torch.bfloat16
    per_token_time: bool = False
    batched_cfg: bool = False
    vae_tile: tuple[int, int, int] | None = None  # latent (h, w, overlap), None: untiled
    text_on_device: bool = True  # False: --t5-cpu
    text_weights: str | None = None  # "fp8" | "int8": --text-weights (umT5 block linears quantised)
    text_kv_cache: bool = False  # per-run text K/V cache on (runtime.text_kv): counted in denoise

    @property
    def tokens(self) -> int:
        st, sh, sw = self.preset.vae.stride
        pt, ph, pw = self.preset.dit.patch_size
        f = (self.frames - 1) // st + 1
        return (f // pt) * (self.height // sh // ph) * (self.width // sw // pw)


@dataclass
class MemoryPrediction:
    """Predicted peaks in bytes, with the parts and the stage each peak comes from."""

    vram_peak: int
    ram_peak: int
    vram_stage: str
    ram_stage: str
    parts: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)  # device bytes of every stage


# ---- weights -------------------------------------------------------------------------------

def gguf_bits_per_weight(qtype: str) -> float:
    """Bits per weight of a GGUF type from its block size and bytes (Q8_0 8.5, Q4_K 4.5, ...)."""
    from wanmoe.runtime.quant.gguf_dequant import QUANT_SIZES

    block, size = QUANT_SIZES[qtype]
    return 8 * size / block


def _block_type(name: str, fmt: str) -> str | None:
    """The '_M' mixes as llama.cpp / city96 make them (an assumption, docs/memory.md):
    v of both attentions and ffn.2 one step up (Q5_K_M: Q6_K, Q3_K_M: Q4_K), the rest at the base."""
    mixes = {"Q5_K_M": ("Q5_K", "Q6_K"), "Q3_K_M": ("Q3_K", "Q4_K")}
    if fmt not in mixes:
        return None
    base, up = mixes[fmt]
    return up if (".v." in name or name.endswith("ffn.2.weight")) else base


def _dims(cfg) -> dict:
    return {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim,
            "out_dim": cfg.out_dim, "patch_size": cfg.patch_size, "text_dim": cfg.text_dim,
            "freq_dim": cfg.freq_dim}


def _entry_bytes(name: str, shape, fmt: str, dtype: torch.dtype) -> int:
    base = fmt if fmt not in ("Q5_K_M", "Q3_K_M") else "Q4_K_M"
    kind = tensor_types([(name, shape)], base, "run", compute_dtype=dtype)[name]
    if kind in ("Q4_K", "Q6_K"):
        kind = _block_type(name, fmt) or kind
    return tensor_bytes(shape, kind)


@lru_cache(maxsize=64)  # pure function of frozen values; the planner asks it many times
def expert_bytes(preset: ModelPreset, fmt: str, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(non-block bytes, bytes of one block) of one expert resident in format `fmt`."""
    cfg = preset.dit
    non_block, blocks = 0, 0
    for name, shape in dit_entries(_dims(cfg)):
        n = _entry_bytes(name, shape, fmt, dtype)
        if name.startswith("blocks."):
            blocks += n
        else:
            non_block += n
    return non_block, blocks // cfg.num_layers


@lru_cache(maxsize=64)
def streamed_host_bytes(preset: ModelPreset, fmt: str, dtype: torch.dtype = torch.bfloat16) -> int:
    """Host bytes of one expert's blocks as `runtime.streaming.HostArena` packs them: whole 1 GiB
    slabs, filled in module order (3-8 % over the raw bytes for A14B)."""
    from wanmoe.runtime.streaming import SLAB_BYTES

    non_block, block = expert_bytes(preset, fmt, dtype)
    cfg = preset.dit
    sizes = []
    for name, shape in dit_entries(_dims(cfg)):
        if name.startswith("blocks.0."):
            sizes.append(_entry_bytes(name, shape, fmt, dtype))
    slabs, offset = 0, None
    for _ in range(cfg.num_layers):
        for n in sizes:
            start = 0 if offset is None else -(-offset // 512) * 512
            if offset is None or start + n > SLAB_BYTES:
                slabs, start = slabs + 1, 0
            offset = start + n
    return slabs * SLAB_BYTES


def _float_expert_bytes(preset: ModelPreset, dtype: torch.dtype) -> int:
    nb, blk = expert_bytes(preset, "bf16" if dtype == torch.bfloat16 else "fp32", dtype)
    return nb + blk * preset.dit.num_layers


def quantise_on_load_bytes(preset: ModelPreset, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes beside the quantised weights while `--weights fp8|int8` loads an expert
    (`runtime.quant.on_load`): the largest block linear as read (storage dtype), its `abs()` for
    the channel scales (same dtype) and the float32 scratch the quantiser reuses."""
    cfg = preset.dit
    from wanmoe.models.dit import WanDiT

    w = WanDiT.storage_dtype("blocks.0.ffn.0.weight", dtype).itemsize
    return max(cfg.ffn_dim * cfg.dim, cfg.dim * cfg.dim) * (2 * w + 4)


def _params(module_fn) -> int:
    with torch.device("meta"):
        m = module_fn()
    return sum(p.numel() for p in m.parameters())


@lru_cache(maxsize=16)
def text_encoder_bytes(preset: ModelPreset, dtype: torch.dtype, weights: str | None = None) -> int:
    """umT5 encoder bytes: every parameter in `dtype`; with `weights` "fp8" / "int8"
    (--text-weights) the block linears at one byte per weight plus a float32 scale per row."""
    from torch import nn

    from wanmoe.text.umt5 import UMT5Encoder

    with torch.device("meta"):
        m = UMT5Encoder(preset.t5)
    total = sum(p.numel() for p in m.parameters()) * dtype.itemsize
    if weights in ("fp8", "int8"):
        for name, mod in m.named_modules():
            if name.startswith("blocks.") and isinstance(mod, nn.Linear):
                n = mod.weight.numel()
                total -= n * dtype.itemsize - n - mod.out_features * 4
    return total


@lru_cache(maxsize=16)
def vae_bytes(preset: ModelPreset) -> int:
    from wanmoe.vae import build_vae

    return _params(lambda: build_vae(preset.vae)) * 4  # fp32


# ---- activations ---------------------------------------------------------------------------

def dit_activation_bytes(preset: ModelPreset, tokens: int, batch: int = 1,
                         dtype: torch.dtype = torch.bfloat16, per_token_time: bool = False,
                         chunk_threshold: int = CHUNK_THRESHOLD, chunk_tokens: int = CHUNK_TOKENS) -> int:
    """Peak bytes of one DiT forward's activations (weights excluded), see the module docstring.

    From `chunk_threshold` tokens on the blocks run their per-token work in chunks of
    `chunk_tokens` tokens (`WanBlock.forward_chunked`); below it the whole sequence at once.
    """
    cfg = preset.dit
    d, t_len, w = cfg.dim, cfg.text_len, dtype.itemsize
    u = batch * tokens * d
    r = cfg.ffn_dim / d
    held = w * u + 4 * u  # the patch tokens (held by the forward) and the block's input
    small = tokens * (d // cfg.num_heads) * 8 + batch * t_len * d * w  # RoPE table, text context
    if tokens >= chunk_threshold:
        bcd = batch * min(chunk_tokens, tokens) * d  # one chunk's [B, c, d] in bytes-per-element
        projections = 3 * w * u + (w + 16 + (24 if per_token_time else 0)) * bcd  # q/k/v + chunk
        attention = 4 * w * u  # q, k, v and the attention output
        update = (4 + w) * u + 12 * bcd  # attention output + the fp32 block output
        act = max(projections, attention, update)
        if per_token_time:
            held += 28 * u  # e [B, L, d] and e0 [B, L, 6, d] in fp32
        return int(act + held + small)
    c = min(ROPE_CHUNK, tokens)
    self_attn = 24 * u + 8 * batch * c * d
    cross = 26 * u if w == 2 else 20 * u + 8 * batch * t_len * d
    ffn = (8 + (w if w == 2 else 0) + 2 * w * r) * u
    if per_token_time:
        held += 52 * u  # e, e0 and the block's modulation sum [B, L, 6, d] in fp32
    return int(max(self_attn, cross, ffn) + held + small)


def weight_transient_bytes(preset: ModelPreset, fmt: str, dtype: torch.dtype) -> int:
    """Bytes a block linear needs beside its weight while it runs (the largest, ffn, counted).

    fp8 / int8 (no workspace): q.float() and q * scale in fp32, then the cast to the compute
    dtype; GGUF: the shared dequantisation buffers (one per weight shape, compute dtype) plus the
    fp32 values of the block being decoded; float weights in the compute dtype: nothing.
    """
    cfg = preset.dit
    fd, w = cfg.ffn_dim * cfg.dim, dtype.itemsize
    if fmt in ("fp8", "int8"):
        return fd * (8 + w)
    if fmt.startswith("Q"):
        return (cfg.dim * cfg.dim + 2 * fd) * w + fd * 4
    return fd * 4 if (fmt == "bf16" and w == 4) else 0


def vae_decode_bytes(preset: ModelPreset, width: int, height: int, frames: int,
                     tile: tuple[int, int, int] | None = None) -> int:
    """Working memory of the chunked decode (traced bytes per pixel x the frame or tile area) + the
    float32 output video."""
    per_px = VAE_BYTES_PER_PIXEL.get(preset.vae.z_dim, VAE_BYTES_PER_PIXEL[16])
    area = width * height
    if tile is not None:
        _, sh, sw = preset.vae.stride
        area = min(area, tile[0] * sh * tile[1] * sw)
    return per_px * area + 3 * frames * width * height * 4


VAE_TILE_OVERLAP = 8  # latent pixels shared by neighbouring tiles (the --vae-tile default)


def auto_vae_tile(preset: ModelPreset, width: int, height: int, frames: int,
                  available: int) -> tuple[int, int, int] | None:
    """The decode's tiling when memory is short: None when the untiled decode fits `available`
    bytes, else the largest latent tile (h, w, overlap) of the halving ladder (1/2, 1/3, 1/4,
    ... of the latent height and width) whose predicted working memory fits; the smallest tried
    (h, w >= 2 overlap + 4) when none does (the output video alone may not fit)."""
    if vae_decode_bytes(preset, width, height, frames) <= available:
        return None
    _, sh, sw = preset.vae.stride
    lh, lw = height // sh, width // sw
    tile = None
    for parts in range(2, max(lh, lw) + 1):
        th, tw = -(-lh // parts), -(-lw // parts)
        if min(th, tw) < 2 * VAE_TILE_OVERLAP + 4:
            break
        tile = (th, tw, VAE_TILE_OVERLAP)
        if vae_decode_bytes(preset, width, height, frames, tile) <= available:
            return tile
    return tile or (lh, lw, 0)


# ---- the whole run -------------------------------------------------------------------------

def predict(req: MemoryRequest) -> MemoryPrediction:
    """Peak device memory and host RAM of `req` (largest stage of each), with the parts."""
    p, n_exp = req.preset, len(req.preset.experts)
    non_block, block = expert_bytes(p, req.weights, req.dtype)
    expert = non_block + block * p.dit.num_layers
    if req.weights in ("fp8", "int8"):  # quantised tensor by tensor while loading
        loaded = expert + quantise_on_load_bytes(p, req.dtype)
    elif req.weights == "bf16" and req.dtype == torch.float32:  # converted after a float load
        loaded = _float_expert_bytes(p, req.dtype)
    else:
        loaded = expert
    t5, vae = text_encoder_bytes(p, req.dtype, req.text_weights), vae_bytes(p)
    batch = 2 if req.batched_cfg else 1
    act = dit_activation_bytes(p, req.tokens, batch, req.dtype, req.per_token_time)
    transient = weight_transient_bytes(p, req.weights, req.dtype)
    text_kv = 0
    if req.text_kv_cache:  # the active expert's K/V of cond + uncond (runtime.text_kv)
        from .text_kv import text_kv_bytes

        text_kv = text_kv_bytes(p.dit, 2, req.dtype)
    decode = vae_decode_bytes(p, req.width, req.height, req.frames, req.vae_tile)
    if req.offload == "none":
        dit_run = n_exp * expert
        dit_load = (n_exp - 1) * expert + loaded
    elif req.offload == "expert":
        dit_run, dit_load = expert, 0
    else:
        dit_run, dit_load = non_block + req.resident_blocks * block, 0
    t5_dev = t5 if req.text_on_device else 0
    t5_kept = t5_dev if req.offload == "none" else 0  # offload shuttles it back to the host
    resident_after = n_exp * expert if req.offload == "none" else 0
    stages = {
        "load": dit_load + vae,
        "text encode": (n_exp * expert if req.offload == "none" else 0) + t5_dev + vae,
        "denoise": dit_run + act + text_kv + transient + t5_kept + vae,
        "vae decode": resident_after + t5_kept + vae + decode,
    }
    host_experts = {"none": 0, "expert": n_exp * expert,
                    "blocks": n_exp * (non_block + streamed_host_bytes(p, req.weights, req.dtype))}[req.offload]
    host_load = 0 if req.offload == "none" else (n_exp - 1) * expert + loaded
    t5_host = t5 if (req.offload != "none" or not req.text_on_device) else 0
    ram = {"load": PROCESS_BASE + host_load, "run": PROCESS_BASE + host_experts + t5_host}
    vstage = max(stages, key=stages.get)
    rstage = max(ram, key=ram.get)
    parts = {"dit_weights_device": dit_run, "dit_activations": act, "weight_transient": transient,
             "text_encoder": t5, "vae_weights": vae, "vae_decode": decode, "expert": expert,
             "expert_block": block, "expert_non_block": non_block, "text_kv_cache": text_kv}
    return MemoryPrediction(stages[vstage], ram[rstage], vstage, rstage, parts, stages)


def fits(pred: MemoryPrediction, vram: int, ram: int | None = None) -> tuple[bool, str]:
    """(fits, reason): the device needs the peak plus the CUDA context; the host its RAM peak."""
    need = pred.vram_peak + CUDA_CONTEXT
    if need > vram:
        return False, f"needs {need / 1e9:.1f} GB VRAM at {pred.vram_stage} (has {vram / 1e9:.1f})"
    if ram is not None and pred.ram_peak > ram:
        return False, f"needs {pred.ram_peak / 1e9:.1f} GB RAM at {pred.ram_stage} (has {ram / 1e9:.1f})"
    return True, f"{need / 1e9:.1f} GB VRAM, {pred.ram_peak / 1e9:.1f} GB RAM"


def weight_format(rt, expert_files=()) -> str | None:
    """The planner's format name for a RuntimeConfig; None when the files decide (GGUF, kept fp8)."""
    from wanmoe.runtime.config import WeightMode

    if any(str(f).lower().endswith(".gguf") for f in expert_files) or rt.weights is WeightMode.KEEP:
        return None
    if rt.weights in (WeightMode.FP8, WeightMode.INT8, WeightMode.BF16):
        return rt.weights.value
    return "bf16" if rt.dtype == torch.bfloat16 else "fp32"


AUTO_HEADROOM = 0.9  # auto plans for 90 % of the card: allocator slack, fragmentation, other users


def auto_offload(preset: ModelPreset, vram: int, dtype: torch.dtype, weights: str | None,
                 resident_blocks: int = 2, text_on_device: bool = True) -> tuple[str, int]:
    """`--offload auto`: the first of none, expert, blocks:N that fits AUTO_HEADROOM x `vram` at
    the preset's default size and frame count (untiled decode); blocks when none does. An
    unknown format (GGUF / kept files) is planned as Q8_0, the largest GGUF in common use."""
    w, h = preset.size
    for mode in OFFLOAD_MODES:
        req = MemoryRequest(preset, w, h, preset.frames, weights or "Q8_0", mode, resident_blocks,
                            dtype, text_on_device=text_on_device)
        if fits(predict(req), int(AUTO_HEADROOM * vram))[0]:
            return mode, resident_blocks
    return "blocks", resident_blocks


def tokens_for(preset: ModelPreset, width: int, height: int, frames: int) -> int:
    return MemoryRequest(preset, width, height, frames).tokens


__all__ = ["auto_vae_tile", "weight_format", "auto_offload", "MemoryRequest", "MemoryPrediction", "predict", "fits", "dit_activation_bytes",
           "expert_bytes", "gguf_bits_per_weight", "WEIGHT_FORMATS", "OFFLOAD_MODES"]
