"""Strict safetensors header parsing: every value that later sizes a read or an allocation is checked.

Layout (huggingface/safetensors): 8-byte little-endian header length N, N bytes of JSON, then the
data block. The JSON is an object mapping tensor names to `{"dtype", "shape", "data_offsets"}`
plus an optional `"__metadata__"` object of string -> string. Files come from strangers, so the
checks below make a bad header a `CheckpointError` naming the file and the entry, before a single
tensor byte is read:

* the header length fits the file and the 100 MB cap of the format;
* the header is a JSON object (no duplicate names) of known dtypes;
* a shape is a list of at most `MAX_RANK` non-negative ints (`bool` is not an int);
* `data_offsets` is two ints with 0 <= begin <= end <= data size, and end - begin is exactly
  numel * itemsize (Python ints: no overflow);
* the tensors' byte ranges do not overlap (header bytes or another tensor never load as weights).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from wanmoe.errors import CheckpointError

# dtype code -> bytes per element (mirrors sources.ST_DTYPES without importing torch here)
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format itself caps headers at 100 MB
MAX_RANK = 16


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(Exception):
    """A JSON object repeats a key (which of the two entries would win is ambiguous)."""


def parse_json_header(path, blob: bytes):
    """JSON text -> object, with every parser failure as one CheckpointError line."""
    try:
        return json.loads(blob, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise CheckpointError(f"{path}: the safetensors header names {e.args[0]!r} twice") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and int-too-long are ValueErrors
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: the safetensors header nests too deeply to be a header") from None


def _check_metadata(path, meta) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: the safetensors __metadata__ must be an object of strings "
                              f"(got {_short(meta)})")
    return meta


def _short(v, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def check_entry(path, name: str, info, data_size: int) -> dict:
    """One tensor entry, checked; returns {"dtype", "shape" (list), "data_offsets" [a, b]}."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has a header entry {_short(info)}, not an object")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ST_ITEMSIZE:
        raise CheckpointError(f"{where} has an unsupported dtype {_short(dtype)}; expected one of "
                              f"{sorted(ST_ITEMSIZE)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where} has shape {_short(shape)}; a shape is a list of at most "
                              f"{MAX_RANK} non-negative integers")
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
        raise CheckpointError(f"{where} has data_offsets {_short(offs)}; expected [begin, end] "
                              "(two integers)")
    a, b = offs
    if not 0 <= a <= b <= data_size:
        raise CheckpointError(f"{where} has data_offsets [{a}, {b}] outside the data block of "
                              f"{data_size} bytes (need 0 <= begin <= end <= {data_size}); the file "
                              "is truncated or corrupt")
    need = math.prod(shape) * ST_ITEMSIZE[dtype]
    if b - a != need:
        raise CheckpointError(f"{where}: {dtype} {shape} needs {need} bytes but its data_offsets "
                              f"[{a}, {b}] hold {b - a}")
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [a, b]}


def _check_overlaps(path, entries: dict[str, dict]) -> None:
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in entries.items()
                   if e["data_offsets"][1] > e["data_offsets"][0])
    for (a0, b0, n0), (a1, b1, n1) in zip(spans, spans[1:]):
        if a1 < b0:
            raise CheckpointError(f"{path}: tensors {n0!r} [{a0}, {b0}) and {n1!r} [{a1}, {b1}) "
                                  "share bytes; the header is corrupt")


def read_header(path: str | Path) -> tuple[dict, int]:
    """Parse and validate a safetensors header -> (header dict with "__metadata__", data offset).

    The returned dict holds every tensor entry in a normalised form plus `"__metadata__"`
    (a dict of strings, possibly empty), so callers can `pop` it as before.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: only {size} bytes long")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path} is truncated or not a safetensors file: the header says "
                                  f"{n} header bytes but the file has {size} bytes")
        blob = fh.read(n)
    header = parse_json_header(path, blob)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, "
                              "not an object of tensor entries")
    data_size = size - 8 - n
    out = {"__metadata__": _check_metadata(path, header.get("__metadata__"))}
    for name, info in header.items():
        if name != "__metadata__":
            out[name] = check_entry(path, name, info, data_size)
    _check_overlaps(path, {k: v for k, v in out.items() if k != "__metadata__"})
    return out, 8 + n
