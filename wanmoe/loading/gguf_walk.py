"""A bounded walk over a GGUF file's header, run before the `gguf` package touches the file.

The `gguf` reader trusts the counts in the header: a 122-byte file declaring a KV array of 2^62
elements makes it allocate and spin. This walk reads the header with `struct` over a memory map
and refuses, as one `CheckpointError` line, any count, string length, array length, dimension
product (Python ints, no overflow), tensor offset or size that cannot fit in the bytes that are
left, before anything is allocated from it. It also returns the metadata as plain Python values
so the values wanmoe uses can be type-checked (`check_orig_shape`).

Layout (ggml docs/gguf.md, v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count,
u64 KV count, KV pairs (string key, u32 type, value), tensor infos (string name, u32 n_dims,
u64 dims innermost first, u32 ggml type, u64 offset into the aligned data block).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wanmoe.errors import CheckpointError

# GGUF value type id -> (struct format, size); 8 = string, 9 = array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9
_MIN_VALUE = {**{t: s for t, (_, s) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
MAX_DIMS = 8  # GGML_MAX_DIMS is 4, but gguf-py writes the 5-D patch embedding as is
MAX_ARRAY_DEPTH = 4
KEEP_ARRAY_ITEMS = 4096  # arrays longer than this are checked and skipped, not decoded
MAX_STRING_ITEMS = 1_000_000  # strings in arrays, whole file: walking (here and in gguf-py) is
# per item, so this bounds the time; LLM tokenizers hold ~500k, Wan files none


@dataclass
class GGUFTensorInfo:
    """One tensor-info record: name, dims (innermost first), ggml type id, absolute byte range."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    start: int
    nbytes: int


@dataclass
class GGUFHeader:
    """What the walk found: version, metadata (Python values), tensors, data block offset."""

    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    data_offset: int = 0


class _Cursor:
    """Reads little-endian values from a buffer, refusing any read past its end."""

    def __init__(self, path, buf, size: int, type_names: dict[int, str]) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0
        self.type_names = type_names  # for error messages only
        self.string_items = 0  # items of string / nested arrays walked so far

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a readable GGUF file: {what} (at byte {self.pos} "
                               f"of {self.size}; truncated or corrupt header)")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain")

    def scalar(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, f"{what} of length {n}")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0):
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return cur.scalar(fmt, n, f"value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"value of {key!r}")
    if vtype != _ARRAY:
        raise cur.fail(f"key {key!r} has unknown value type {vtype}")
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.fail(f"key {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
    itype = cur.u32(f"item type of {key!r}")
    count = cur.u64(f"length of array {key!r}")
    if itype not in _MIN_VALUE:
        raise cur.fail(f"array {key!r} has unknown item type {itype}")
    cur.need(count * _MIN_VALUE[itype], f"array {key!r} of {count} items")
    if itype in (_STRING, _ARRAY):
        cur.string_items += count
        if cur.string_items > MAX_STRING_ITEMS:
            raise cur.fail(f"array {key!r} brings the file's array items to {cur.string_items}, "
                           f"more than the {MAX_STRING_ITEMS} a model file needs")
    if itype in _SCALARS and count > KEEP_ARRAY_ITEMS:  # fixed-size items: skip in one step
        cur.pos += count * _SCALARS[itype][1]
        return None
    items = [_value(cur, itype, key, depth + 1) for _ in range(count)]
    return items if count <= KEEP_ARRAY_ITEMS else None


def _tensor_bytes(cur: _Cursor, name: str, dims: tuple[int, ...], type_id: int, sizes) -> int:
    """Stored bytes of a tensor (Python ints); refused when its type or row length is impossible."""
    if type_id not in sizes:
        qname = cur.type_names.get(type_id, f"unknown type id {type_id}")
        raise CheckpointError(f"{cur.path}: tensor {name!r} has GGUF type {qname}, which wanmoe "
                              f"cannot dequantize; supported types: "
                              f"{', '.join(n for n, _, _ in sizes.values())}")
    qname, block, size = sizes[type_id]
    n = math.prod(dims)
    if dims and dims[0] % block:
        raise CheckpointError(f"{cur.path}: tensor {name!r} ({qname}) has rows of {dims[0]} "
                              f"elements, not a multiple of its block size {block}")
    return n // block * size


def _tensor_infos(cur: _Cursor, count: int, sizes) -> list[tuple[str, tuple[int, ...], int, int, int]]:
    out, seen = [], set()
    for i in range(count):
        name = cur.string(f"name of tensor {i}")
        if name in seen:
            raise cur.fail(f"tensor {name!r} is listed twice")
        seen.add(name)
        n_dims = cur.u32(f"rank of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dims (GGUF allows at most {MAX_DIMS})")
        dims = tuple(cur.u64(f"dims of tensor {name!r}") for _ in range(n_dims))
        if 0 in dims:
            raise cur.fail(f"tensor {name!r} has dims {list(dims)}; a GGUF tensor has no zero dim")
        type_id = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"offset of tensor {name!r}")
        nbytes = _tensor_bytes(cur, name, dims, type_id, sizes)
        if nbytes > cur.size:  # cannot fit whatever the data offset turns out to be
            raise CheckpointError(f"{cur.path}: tensor {name!r} needs {nbytes} bytes but the file "
                                  f"has only {cur.size}; the file is truncated or corrupt")
        out.append((name, dims, type_id, offset, nbytes))
    return out


def _alignment(cur: _Cursor, meta: dict) -> int:
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment {align!r} is not a positive power of two")
    return align


def _check_ranges(path, tensors: list[GGUFTensorInfo], size: int) -> None:
    for t in tensors:
        if t.start + t.nbytes > size:
            raise CheckpointError(f"{path}: tensor {t.name!r} ends at byte {t.start + t.nbytes} but "
                                  f"the file has only {size} bytes; the file is truncated "
                                  "(re-download it)")
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors if t.nbytes)
    for (a0, b0, n0), (a1, b1, n1) in zip(spans, spans[1:]):
        if a1 < b0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} share bytes "
                                  f"([{a0}, {b0}) and [{a1}, {b1})); the header is corrupt")


def walk(path: str | Path, type_sizes: dict[int, tuple[str, int, int]],
         type_names: dict[int, str] | None = None) -> GGUFHeader:
    """Walk and check the header of a GGUF file.

    type_sizes: ggml type id -> (name, block elements, block bytes) of the types the caller
    can read; any other type is refused here (named from `type_names` when given).
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise CheckpointError(f"{path}: not a GGUF file (only {size} bytes long)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(path, buf, size, type_names or {})
        if bytes(buf[:4]) != b"GGUF":
            raise CheckpointError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.u32("version")
        if version not in (2, 3):
            raise cur.fail(f"version {version} is not supported (2 or 3, little-endian)")
        n_tensors, n_kv = cur.u64("tensor count"), cur.u64("KV count")
        cur.need(n_kv * 13, f"{n_kv} KV entries")  # key length 8 + type 4 + at least 1 byte
        cur.need(n_kv * 13 + n_tensors * 24, f"{n_tensors} tensor infos")  # 8 + 4 + 4 + 8 bytes each
        meta: dict = {}
        for _ in range(n_kv):
            key = cur.string("KV key")
            if key in meta:
                raise cur.fail(f"key {key!r} appears twice")
            meta[key] = _value(cur, cur.u32(f"type of {key!r}"), key)
        infos = _tensor_infos(cur, n_tensors, type_sizes)
        align = _alignment(cur, meta)
        data_offset = -(-cur.pos // align) * align
    tensors = [GGUFTensorInfo(n, d, t, data_offset + off, nb) for n, d, t, off, nb in infos]
    _check_ranges(path, tensors, size)
    return GGUFHeader(version=version, metadata=meta, tensors=tensors, data_offset=data_offset)


def check_orig_shape(path, name: str, value) -> tuple[int, ...]:
    """A `comfy.gguf.orig_shape.<name>` value must be a list of at most 8 non-negative ints."""
    if (not isinstance(value, list) or len(value) > 8
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise CheckpointError(f"{path}: comfy.gguf.orig_shape.{name} is {str(value)[:80]}; it must "
                              "be a list of at most 8 non-negative integers")
    return tuple(value)
