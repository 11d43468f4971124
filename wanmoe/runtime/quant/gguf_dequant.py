"""GGUF block dequantisation in plain PyTorch (vectorised, any device).

Block layouts follow ggml (`ggml-common.h`); every function takes raw blocks `[n, type_size]`
uint8 and returns float32 `[n, block_size]`. The arithmetic is done in float32 in the same order
as the `gguf` package's numpy reference, so the results are bit-identical to
`gguf.quants.dequantize` (tests/unit/test_quant_dequant.py checks every type).
"""

from __future__ import annotations

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
FLOAT_TYPES = ("F32", "F16", "BF16")


def _shifts(values, device, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=device).view(shape)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two raw bytes per row -> float32 `[n, 1]`."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bytes `[n, k*width]` -> 4-bit values `[n, k, 2, width]` (low nibbles first, as ggml)."""
    q = qs.reshape(n, -1, 1, width) >> _shifts([0, 4], qs.device, (1, 1, 2, 1))
    return q & 0x0F


def _bits(qh: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Bit planes: bytes `[n, width]` -> `[n, 8, width]` with plane i = bit i of each byte."""
    return (qh.reshape(n, 1, width) >> _shifts(list(range(8)), qh.device, (1, 8, 1))) & 1


def _q4_0(b):
    n = b.shape[0]
    d, qs = _f16(b[:, :2]), b[:, 2:]
    q = _nibbles(qs, n, 16).reshape(n, 32).to(torch.int8) - 8
    return d * q.float()


def _q4_1(b):
    n = b.shape[0]
    d, m, qs = _f16(b[:, :2]), _f16(b[:, 2:4]), b[:, 4:]
    q = _nibbles(qs, n, 16).reshape(n, 32).float()
    return d * q + m


def _q5_low_high(qh, qs, n):
    # qh is a little-endian uint32 whose bit j is the 5th bit of element j.
    high = _bits(qh, n, 4).permute(0, 2, 1).reshape(n, 32)  # byte-major, bit-minor = bit j
    low = _nibbles(qs, n, 16).reshape(n, 32)
    return low | (high << 4)


def _q5_0(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    q = _q5_low_high(b[:, 2:6], b[:, 6:], n).to(torch.int8) - 16
    return d * q.float()


def _q5_1(b):
    n = b.shape[0]
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _q5_low_high(b[:, 4:8], b[:, 8:], n).float()
    return d * q + m


def _q8_0(b):
    d = _f16(b[:, :2])
    q = b[:, 2:].contiguous().view(torch.int8).float()
    return q * d


def _q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], b.device, (1, 1, 4, 1))) & 3
    q = q.reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    # 16 6-bit scales: low 4 bits from bytes 0..7 (two nibbles each), high 2 bits from 8..11.
    low = (sc[:, :8].reshape(n, 1, 8) >> _shifts([0, 4], b.device, (1, 2, 1))).reshape(n, 16)
    high = (sc[:, 8:].reshape(n, 1, 4) >> _shifts([0, 2, 4, 6], b.device, (1, 4, 1))).reshape(n, 16)
    scales = ((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int8) - 32
    dl = (d * scales.float()).reshape(n, 16, 1)
    ql = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], b.device, (1, 1, 4, 1))) & 3
    qh = _bits(hmask, n, 32) ^ 1  # a set mask bit means "no -4 offset"
    q = ql.reshape(n, 16, 16).to(torch.int8) - (qh.reshape(n, 16, 16) << 2).to(torch.int8)
    return (dl * q.float()).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12-byte packed 6-bit (scale, min) pairs of Q4_K/Q5_K -> two `[n, 8]` uint8."""
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16], n)
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], n, 32).reshape(n, 8, 32).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16], n)
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:], n, 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], n, 32)  # [n, 8, 32]: plane i is the 5th bit of sub-block i
    q = (ql | (qh << 4)).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    low = _nibbles(ql, n, 64).reshape(n, 8, 32)
    high = (qh.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], b.device, (1, 1, 4, 1))) & 3
    q = (low | (high.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


_BLOCK_FNS = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
SUPPORTED_TYPES = FLOAT_TYPES + tuple(_BLOCK_FNS)


def dequantize(raw: torch.Tensor, qtype: str, shape, dtype: torch.dtype = torch.float32,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Raw GGUF bytes (uint8, any shape, row-major) -> tensor of torch `shape` in `dtype`.

    `out`, when given, receives the result (a reused buffer of `shape`, any float dtype).
    """
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF type {qtype!r} is not supported; supported: {SUPPORTED_TYPES}")
    raw = raw.reshape(-1)
    if qtype == "F32":
        vals = raw.view(torch.float32)
    elif qtype == "F16":
        vals = raw.view(torch.float16)
    elif qtype == "BF16":
        vals = raw.view(torch.bfloat16)
    else:
        _, type_size = QUANT_SIZES[qtype]
        vals = _BLOCK_FNS[qtype](raw.view(-1, type_size))  # [n_blocks, block_size] float32
    vals = vals.reshape(shape)
    if out is None:
        return vals.to(dtype)
    return out.copy_(vals)


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
        rows = 1
        for s in self.shape[:-1]:
            rows *= s
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
