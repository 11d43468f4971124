"""GGUF block dequantisation in plain PyTorch (vectorised, any device).

Block layouts follow ggml (`ggml-common.h`); every block function takes raw blocks
`[n, type_size]` uint8 and returns float32 `[n, block_size]` (or fills `out`). The arithmetic
is done in float32 in the same order as the `gguf` package's numpy reference, so the results
are bit-identical to `gguf.quants.dequantize` (tests/unit/test_quant_dequant.py checks every type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

QK_K = 256  # super-block size of the K-quants

# name -> (block_size, type_size in bytes); the same table as ggml's type traits.
QUANT_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
FLOAT_TYPES = tuple(FLOAT_DTYPES)


def _shifts(step: int, count: int, device, shape) -> torch.Tensor:
    """Shift amounts 0, step, ..., as uint8 `shape`; made with arange, so on a GPU it is a
    kernel launch rather than a blocking host-to-device copy of a Python list."""
    return torch.arange(0, step * count, step, dtype=torch.uint8, device=device).view(shape)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two raw bytes per row -> float32 `[n, 1]`."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bytes `[n, k*width]` -> 4-bit values `[n, k, 2, width]` (low nibbles first, as ggml)."""
    return (qs.reshape(n, -1, 1, width) >> _shifts(4, 2, qs.device, (1, 1, 2, 1))) & 0x0F


def _crumbs(qs: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bytes `[n, k*width]` -> 2-bit values `[n, k, 4, width]` (lowest bits first, as ggml)."""
    return (qs.reshape(n, -1, 1, width) >> _shifts(2, 4, qs.device, (1, 1, 4, 1))) & 3


def _bits(qh: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bit planes: bytes `[n, width]` -> `[n, 8, width]` with plane i = bit i of each byte."""
    return (qh.reshape(n, 1, width) >> _shifts(1, 8, qh.device, (1, 8, 1))) & 1


def _into(out: torch.Tensor | None, shape) -> torch.Tensor | None:
    """`out` (a contiguous `[n, block_size]` buffer) viewed as a block function's result shape."""
    return None if out is None else out.view(shape)


# Block functions: raw blocks `[n, type_size]` uint8 -> float32 values. The last operation
# writes into `out` when given (math in float32, one rounding into out's dtype on the store:
# the same values as computing float32 and casting afterwards).

def _q4_0(b, out=None):
    n = b.shape[0]
    d, qs = _f16(b[:, :2]), b[:, 2:]
    q = _nibbles(qs, n, 16).reshape(n, 32).to(torch.int8) - 8
    return torch.mul(d, q.float(), out=out)


def _q4_1(b, out=None):
    n = b.shape[0]
    d, m, qs = _f16(b[:, :2]), _f16(b[:, 2:4]), b[:, 4:]
    q = _nibbles(qs, n, 16).reshape(n, 32).float()
    return torch.add(d * q, m, out=out)


def _q5_low_high(qh, qs, n):
    # qh is a little-endian uint32 whose bit j is the 5th bit of element j.
    high = _bits(qh, n, 4).permute(0, 2, 1).reshape(n, 32)  # byte-major, bit-minor = bit j
    low = _nibbles(qs, n, 16).reshape(n, 32)
    return low | (high << 4)


def _q5_0(b, out=None):
    n = b.shape[0]
    d = _f16(b[:, :2])
    q = _q5_low_high(b[:, 2:6], b[:, 6:], n).to(torch.int8) - 16
    return torch.mul(d, q.float(), out=out)


def _q5_1(b, out=None):
    n = b.shape[0]
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _q5_low_high(b[:, 4:8], b[:, 8:], n).float()
    return torch.add(d * q, m, out=out)


def _q8_0(b, out=None):
    d = _f16(b[:, :2])
    q = b[:, 2:].contiguous().view(torch.int8).float()
    return torch.mul(q, d, out=out)


def _q2_k(b, out=None):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _crumbs(qs, n, 32).reshape(n, 16, 16).float()
    return torch.sub(dl * q, ml, out=_into(out, q.shape)).reshape(n, QK_K)


def _q3_k(b, out=None):
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    # 16 6-bit scales: low 4 bits from bytes 0..7 (two nibbles each), high 2 bits from 8..11.
    low, high = _nibbles(sc[:, :8], n, 8).reshape(n, 16), _crumbs(sc[:, 8:], n, 4).reshape(n, 16)
    scales = (low | (high << 4)).to(torch.int8) - 32
    dl = (d * scales.float()).reshape(n, 16, 1)
    qh = _bits(hmask, n, 32) ^ 1  # a set mask bit means "no -4 offset"
    q = _crumbs(qs, n, 32).reshape(n, 16, 16).to(torch.int8) - (qh.reshape(n, 16, 16) << 2).to(torch.int8)
    return torch.mul(dl, q.float(), out=_into(out, q.shape)).reshape(n, QK_K)


def _k_scales(b: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K block head (fp16 d, fp16 dmin, 12 bytes of packed 6-bit scale/min pairs)
    -> per-sub-block scale and min terms, float32 `[n, 8, 1]` each."""
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    s = b[:, 4:16].reshape(n, 3, 4)
    lo, mid, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], dim=-1)  # [n, 8]
    mn = torch.cat([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], dim=-1)
    return (d * sc.float()).reshape(n, 8, 1), (dmin * mn.float()).reshape(n, 8, 1)


def _q4_k(b, out=None):
    n = b.shape[0]
    dl, ml = _k_scales(b, n)
    q = _nibbles(b[:, 16:], n, 32).reshape(n, 8, 32).float()
    return torch.sub(dl * q, ml, out=_into(out, q.shape)).reshape(n, QK_K)


def _q5_k(b, out=None):
    n = b.shape[0]
    dl, ml = _k_scales(b, n)
    ql = _nibbles(b[:, 48:], n, 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], n, 32)  # [n, 8, 32]: plane i is the 5th bit of sub-block i
    q = (ql | (qh << 4)).float()
    return torch.sub(dl * q, ml, out=_into(out, q.shape)).reshape(n, QK_K)


def _q6_k(b, out=None):
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    low = _nibbles(ql, n, 64).reshape(n, 8, 32)
    high = _crumbs(qh, n, 32).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16)
    return torch.mul(d, q.float(), out=_into(out, q.shape)).reshape(n, QK_K)


_BLOCK_FNS = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
SUPPORTED_TYPES = FLOAT_TYPES + tuple(_BLOCK_FNS)


def dequantize(raw: torch.Tensor, qtype: str, shape, dtype: torch.dtype = torch.float32,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Raw GGUF bytes (uint8, any shape, row-major) -> tensor of torch `shape` in `dtype`.

    `out`, when given, receives the result (a reused buffer of `shape`, any float dtype; its
    dtype wins over `dtype`). A contiguous `out` is written by the last block operation
    directly, without a float32 copy of the whole weight.
    """
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF type {qtype!r} is not supported; supported: {SUPPORTED_TYPES}")
    if out is not None and tuple(out.shape) != tuple(shape):
        raise ValueError(f"out buffer has shape {tuple(out.shape)}, the weight is {tuple(shape)}")
    raw = raw.reshape(-1)
    if qtype in FLOAT_DTYPES:
        vals = raw.view(FLOAT_DTYPES[qtype]).reshape(shape)
    else:
        block, type_size = QUANT_SIZES[qtype]
        blocks = raw.view(-1, type_size)  # [n_blocks, type_size]
        if out is not None and out.is_contiguous():
            _BLOCK_FNS[qtype](blocks, out.view(-1, block))
            return out
        vals = _BLOCK_FNS[qtype](blocks).reshape(shape)  # float32
    return vals.to(dtype) if out is None else out.copy_(vals)


def row_bytes(qtype: str, row_len: int) -> int:
    """Bytes one row of `row_len` elements takes in `qtype`."""
    block, size = QUANT_SIZES[qtype]
    if row_len % block:
        raise ValueError(f"row length {row_len} is not a multiple of the {qtype} block size {block}")
    return row_len // block * size


@dataclass
class GGUFWeight:
    """A quantised GGUF tensor: raw blocks (uint8 `[rows, row_bytes]`), its type and torch shape."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        rows = math.prod(self.shape[:-1])
        expect = rows * row_bytes(self.qtype, self.shape[-1])
        if self.data.dtype != torch.uint8 or self.data.numel() != expect:
            raise ValueError(f"{self.qtype} weight of shape {self.shape} needs {expect} uint8 bytes, "
                             f"got {self.data.numel()} {self.data.dtype}")
        self.data = self.data.reshape(rows, -1)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device) -> "GGUFWeight":
        return GGUFWeight(self.data.to(device), self.qtype, self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None):
        return dequantize(self.data, self.qtype, self.shape, dtype, out=out)
