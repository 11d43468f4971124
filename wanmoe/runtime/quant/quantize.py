"""Our quantisers, in torch: GGUF Q8_0 / Q4_K / Q6_K blocks, scaled fp8 and int8 per channel.

`quantize_q8_0` is bit-identical to ggml's reference (`gguf.quants.quantize`, checked in
tests/unit/test_quant_quantize.py). The K-quant quantisers are simple absmax-per-sub-block
versions (no ggml-style error search): they write valid blocks that any GGUF reader decodes,
with somewhat larger error than llama-quantize's output.
"""

from __future__ import annotations

import torch

from wanmoe.runtime.quant.gguf_dequant import QK_K, GGUFWeight

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _rows_blocks(w: torch.Tensor, block: int, qtype: str) -> torch.Tensor:
    if w.dim() < 1 or w.shape[-1] % block:
        raise ValueError(f"{qtype} needs a row length that is a multiple of {block}; "
                         f"got shape {tuple(w.shape)}")
    return w.detach().float().reshape(-1, block)


def _f16_bytes(x: torch.Tensor) -> torch.Tensor:
    """float32 `[n, 1]` -> its float16 bytes `[n, 2]` (round to nearest even)."""
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, computed exactly like ggml's `roundf` port in gguf-py."""
    a = x.abs()
    fl = torch.floor(a)
    return torch.sign(x) * (fl + torch.floor(2 * (a - fl)))


def _safe_inv(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def quantize_q8_0(w: torch.Tensor) -> GGUFWeight:
    """float tensor (rows a multiple of 32) -> Q8_0 blocks: fp16 scale + 32 int8 each."""
    x = _rows_blocks(w, 32, "Q8_0")  # [n, 32]
    d = x.abs().amax(dim=1, keepdim=True) / 127
    q = _roundf(x * _safe_inv(d)).to(torch.int8).view(torch.uint8)
    return GGUFWeight(torch.cat([_f16_bytes(d), q], dim=1), "Q8_0", tuple(w.shape))


def _pack_k_scales(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and mins per block (uint8 `[n, 8]` each) -> ggml's 12-byte packing."""
    lo = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    mid = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return torch.cat([lo, mid, hi], dim=1)


def quantize_q4_k(w: torch.Tensor) -> GGUFWeight:
    """float tensor (rows a multiple of 256) -> Q4_K: x ~ d*sc*q - dmin*m, q in 0..15."""
    x = _rows_blocks(w, QK_K, "Q4_K").reshape(-1, 8, 32)  # [n, sub-block, 32]
    n = x.shape[0]
    low = x.amin(-1).clamp(max=0)  # [n, 8], <= 0 so that the offset is a subtraction
    s_f = (x.amax(-1) - low) / 15
    m_f = -low
    d = (s_f.amax(-1, keepdim=True) / 63).half().float()  # [n, 1] as stored
    dmin = (m_f.amax(-1, keepdim=True) / 63).half().float()
    sc = torch.round(s_f * _safe_inv(d)).clamp(0, 63)
    mn = torch.round(m_f * _safe_inv(dmin)).clamp(0, 63)
    ds = (d * sc).unsqueeze(-1)  # [n, 8, 1], the exact products the dequantiser forms
    dm = (dmin * mn).unsqueeze(-1)
    q = torch.round((x + dm) * _safe_inv(ds)).clamp(0, 15).to(torch.uint8)  # [n, 8, 32]
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    scales = _pack_k_scales(sc.to(torch.uint8), mn.to(torch.uint8))
    blocks = torch.cat([_f16_bytes(d), _f16_bytes(dmin), scales, qs], dim=1)
    return GGUFWeight(blocks, "Q4_K", tuple(w.shape))


def quantize_q6_k(w: torch.Tensor) -> GGUFWeight:
    """float tensor (rows a multiple of 256) -> Q6_K: x ~ d*scale*(q - 32), q in 0..63."""
    x = _rows_blocks(w, QK_K, "Q6_K").reshape(-1, 16, 16)  # [n, sub-block, 16]
    n = x.shape[0]
    s_f = x.abs().amax(-1) / 31  # [n, 16]
    d = (s_f.amax(-1, keepdim=True) / 127).half().float()  # [n, 1]
    sc = torch.round(s_f * _safe_inv(d)).clamp(-128, 127)
    ds = (d * sc).unsqueeze(-1)
    q = (torch.round(x * _safe_inv(ds)).clamp(-32, 31) + 32).to(torch.uint8)  # [n, 16, 16]
    # element e = h*128 + r: low nibble in ql[h*64 + r%64] (upper half if r >= 64),
    # high 2 bits in qh[h*32 + r%32] at bit 2*(r//32).
    q = q.reshape(n, 2, 128)
    low, high = q & 0x0F, q >> 4
    low = low.reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = high.reshape(n, 2, 4, 32)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    scales = sc.to(torch.int8).view(torch.uint8)
    blocks = torch.cat([ql, qh.reshape(n, 64), scales, _f16_bytes(d)], dim=1)
    return GGUFWeight(blocks, "Q6_K", tuple(w.shape))


_GGUF_FNS = {"Q8_0": quantize_q8_0, "Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}
GGUF_QUANTIZERS = tuple(_GGUF_FNS)


def quantize_gguf(w: torch.Tensor, qtype: str) -> GGUFWeight:
    """Dispatch to our GGUF quantiser for `qtype` (one of GGUF_QUANTIZERS)."""
    if qtype not in _GGUF_FNS:
        raise ValueError(f"no quantiser for GGUF type {qtype!r}; ours: {GGUF_QUANTIZERS}")
    return _GGUF_FNS[qtype](w)


def _channel_scale(w: torch.Tensor, qmax: float) -> torch.Tensor:
    """Per-output-channel scale absmax / qmax, float32 `[out, 1]` (1 for all-zero rows)."""
    if w.dim() != 2:
        raise ValueError(f"per-channel quantisation needs a 2-D weight, got shape {tuple(w.shape)}")
    # abs and max are exact in any float dtype: no float32 copy of the weight for the scale
    scale = (w.detach().abs().amax(dim=1).float() / qmax)[:, None]
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _float32_copy(w: torch.Tensor, work: torch.Tensor | None) -> torch.Tensor:
    """w as a float32 copy: in `work` (a reusable float32 buffer of at least w.numel() elements
    on w's device) when given, so that a loop over many weights allocates it once."""
    if work is None or work.numel() < w.numel() or work.device != w.device:
        return w.detach().to(torch.float32, copy=True)
    return work.reshape(-1)[: w.numel()].view(w.shape).copy_(w.detach())


def quantize_fp8(w: torch.Tensor, work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D weight -> (float8_e4m3fn weight, float32 scale [out, 1]); w ~ q * scale.
    `work`: optional float32 scratch buffer (see `_float32_copy`); results are the same."""
    scale = _channel_scale(w, FP8_MAX)
    x = _float32_copy(w, work).div_(scale)  # one float32 copy, worked on in place
    return x.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_int8(w: torch.Tensor, work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D weight -> (int8 weight in -127..127, float32 scale [out, 1]); w ~ q * scale.
    `work`: optional float32 scratch buffer (see `_float32_copy`); results are the same."""
    scale = _channel_scale(w, 127)
    x = _float32_copy(w, work).div_(scale)  # one float32 copy, worked on in place
    return x.round_().clamp_(-127, 127).to(torch.int8), scale
