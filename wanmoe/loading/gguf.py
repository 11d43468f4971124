"""GGUF reader (`GGUFSource`, the TensorSource interface) and writer (`write_gguf`).

Wan GGUF files (city96 / QuantStack, spec formats.md §4) hold official tensor names, carry no
hyper-parameters and store dims innermost-first; `GGUFSource` reports torch-order shapes.
Float tensors (F32/F16/BF16) come back as torch tensors; quantised ones as `GGUFWeight`
(raw blocks), or dequantised when the caller asks for a dtype.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanmoe.errors import CheckpointError
from wanmoe.loading.gguf_walk import check_orig_shape
from wanmoe.loading.sources import TensorSource
from wanmoe.runtime.quant.gguf_dequant import (
    FLOAT_DTYPES, FLOAT_TYPES, QUANT_SIZES, SUPPORTED_TYPES, GGUFWeight, dequantize, row_bytes)

__all__ = ["GGUFSource", "GGUFWeight", "TensorSpec", "open_gguf", "write_gguf", "write_gguf_specs"]

_INSTALL_HINT = "reading/writing GGUF files needs the `gguf` package: pip install gguf"
_ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."  # ComfyUI-GGUF's per-tensor shape override
_GGUF_FLOAT = {v: k for k, v in FLOAT_DTYPES.items()}  # torch dtype -> GGUF float type


def _gguf():
    try:
        import gguf
    except ImportError as e:  # optional dependency
        raise CheckpointError(_INSTALL_HINT) from e
    return gguf


def _checked_reader_cls(gguf):
    """A GGUFReader that validates tensor types and extents before mapping any tensor."""

    class _CheckedReader(gguf.GGUFReader):
        """GGUFReader whose tensor table is checked (type supported, data inside the file)."""

        def __init__(self, path: str):
            self._path = path
            super().__init__(path, mode="r")

        def _build_tensors(self, start_offs, fields):
            size = len(self.data)
            for field in fields:
                _, name_data, _, dims, raw_type, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                _check_tensor(self._path, name, int(raw_type[0]), [int(d) for d in dims],
                              start_offs + int(offset[0]), size, gguf)
            super()._build_tensors(start_offs, fields)

    return _CheckedReader


def _check_tensor(path, name, raw_type, dims, start, file_size, gguf) -> None:
    try:
        qtype = gguf.GGMLQuantizationType(raw_type).name
    except ValueError:
        qtype = f"unknown type id {raw_type}"
    if qtype not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has GGUF type {qtype}, which wanmoe cannot dequantize; "
            f"supported types: {', '.join(SUPPORTED_TYPES)}")
    block, size = QUANT_SIZES[qtype]
    n = int(np.prod(dims)) if dims else 1
    end = start + n // block * size
    if end > file_size:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({qtype}, {n} elements) ends at byte {end} but the file "
            f"has only {file_size} bytes; the file is truncated (re-download it)")


def _walk_header(path: Path, gguf):
    """`gguf_walk.walk` with the ggml types wanmoe can read (id -> name, block, block bytes)."""
    from wanmoe.loading.gguf_walk import walk

    sizes = {int(gguf.GGMLQuantizationType[q]): (q, *QUANT_SIZES[q]) for q in SUPPORTED_TYPES}
    return walk(path, sizes, {int(t): t.name for t in gguf.GGMLQuantizationType})


def _torch_shape(path, name: str, dims, meta: dict) -> tuple[int, ...]:
    """GGUF dims (innermost first) -> torch shape, with the Wan shape restorations."""
    shape = tuple(int(d) for d in reversed(list(dims)))
    override = meta.get(_ORIG_SHAPE_KEY + name)
    if override is not None:
        orig = check_orig_shape(path, name, override)
        if math.prod(orig) != math.prod(shape):
            raise CheckpointError(f"{path}: tensor {name!r} has {math.prod(shape)} elements but its "
                                  f"{_ORIG_SHAPE_KEY}{name} entry says shape {list(orig)}")
        return orig
    # ggml drops trailing unit dims: a block modulation [1, 6, d] can be stored as [6, d].
    if name.endswith("modulation") and len(shape) == 2:
        shape = (1,) + shape
    return shape


class GGUFSource(TensorSource):
    """TensorSource over one `.gguf` file (memory-mapped; tensors are copied out on `get`)."""

    def __init__(self, path: str | os.PathLike):
        self.paths = (Path(path),)
        if not self.path.is_file():
            raise CheckpointError(f"GGUF file {self.path} does not exist")
        gguf = _gguf()
        _walk_header(self.path, gguf)  # bounded checks before the gguf reader trusts any count
        try:
            self._reader = _checked_reader_cls(gguf)(str(self.path))
        except CheckpointError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(
                f"{self.path}: not a readable GGUF file (truncated or corrupt header: {e})") from e
        self.metadata = self._read_metadata()
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._shapes = {n: _torch_shape(self.path, n, t.shape, self.metadata)
                        for n, t in self._tensors.items()}

    def _read_metadata(self) -> dict:
        meta = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            meta[key] = field.contents()
        return meta

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def _entry(self, name: str):
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in {self.path}") from None

    def qtype(self, name: str) -> str:
        """GGML type name of a tensor ("F32", "Q4_K", ...)."""
        return self._entry(name).tensor_type.name

    def shape(self, name: str) -> tuple[int, ...]:
        self._entry(name)
        return self._shapes[name]

    def dtype(self, name: str) -> torch.dtype | str:
        """torch dtype for float tensors, else the GGUF type name (e.g. "Q4_K")."""
        qtype = self.qtype(name)
        return FLOAT_DTYPES.get(qtype, qtype)

    def nbytes(self, name: str) -> int:
        return int(self._entry(name).n_bytes)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor | GGUFWeight:
        """The tensor; quantised ones as `GGUFWeight` unless `dtype` asks for a dense tensor."""
        t = self._entry(name)
        qtype, shape = t.tensor_type.name, self._shapes[name]
        raw = torch.from_numpy(np.array(t.data).reshape(-1).view(np.uint8))  # copy off the mmap
        if qtype in FLOAT_TYPES:
            return dequantize(raw, qtype, shape, FLOAT_DTYPES[qtype] if dtype is None else dtype)
        weight = GGUFWeight(raw, qtype, shape)
        return weight if dtype is None else weight.dequantize(dtype)

    def close(self) -> None:
        self._tensors = {}
        self._reader = None


def open_gguf(path: str | os.PathLike) -> GGUFSource:
    """Open a `.gguf` file as a TensorSource."""
    return GGUFSource(path)


@dataclass
class TensorSpec:
    """One tensor to write: torch-order shape, GGUF type and a producer called when it is written."""

    name: str
    shape: tuple[int, ...]
    qtype: str  # F32, F16, BF16 or a quantised type
    produce: Callable[[], torch.Tensor | GGUFWeight]

    @property
    def nbytes(self) -> int:
        rows = math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1
        return rows * row_bytes(self.qtype, self.shape[-1]) if self.shape else row_bytes(self.qtype, 1)


def _spec_of(name: str, value) -> TensorSpec:
    if isinstance(value, GGUFWeight):
        return TensorSpec(name, value.shape, value.qtype, lambda: value)
    if not isinstance(value, torch.Tensor) or value.dtype not in _GGUF_FLOAT:
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"tensor {name!r}: {kind} cannot be written to GGUF "
                        "(use float32, float16, bfloat16 or a GGUFWeight)")
    return TensorSpec(name, tuple(value.shape), _GGUF_FLOAT[value.dtype], lambda: value)


def _as_bytes(spec: TensorSpec) -> np.ndarray:
    """The produced tensor as the numpy array GGUFWriter writes (checked against the spec)."""
    value = spec.produce()
    if isinstance(value, GGUFWeight):
        got_type, got_shape, raw = value.qtype, value.shape, value.data
    else:
        got_type, got_shape = _GGUF_FLOAT.get(value.dtype), tuple(value.shape)
        raw = value.detach().contiguous().reshape(-1).view(torch.uint8)
    if got_type != spec.qtype or tuple(got_shape) != tuple(spec.shape):
        raise ValueError(f"tensor {spec.name!r}: produced {got_type} {tuple(got_shape)}, "
                         f"planned {spec.qtype} {tuple(spec.shape)}")
    return raw.cpu().numpy().reshape(-1)


def _info_shape_dtype(spec: TensorSpec) -> tuple[tuple[int, ...], np.dtype]:
    """GGUFWriter wants element shapes for F32/F16 and byte shapes (uint8) for everything else."""
    if spec.qtype == "F32":
        return spec.shape, np.dtype(np.float32)
    if spec.qtype == "F16":
        return spec.shape, np.dtype(np.float16)
    return (*spec.shape[:-1], row_bytes(spec.qtype, spec.shape[-1])), np.dtype(np.uint8)


def _file_type(specs: list[TensorSpec], gguf) -> int:
    """`general.file_type` from the most common quantised type (else the widest float type)."""
    counts: dict[str, int] = {}
    for s in specs:
        counts[s.qtype] = counts.get(s.qtype, 0) + 1
    quant = {k: v for k, v in counts.items() if k not in FLOAT_TYPES}
    if not quant:
        for q, ft in (("BF16", "MOSTLY_BF16"), ("F16", "MOSTLY_F16")):
            if q in counts:
                return int(gguf.LlamaFileType[ft])
        return int(gguf.LlamaFileType.ALL_F32)
    key = "MOSTLY_" + max(quant, key=quant.get)
    members = gguf.LlamaFileType.__members__
    return int(members[key]) if key in members else int(gguf.LlamaFileType.GUESSED)


def write_gguf_specs(path: str | os.PathLike, specs: Iterable[TensorSpec], arch: str = "wan",
                     file_type: int | str | None = None,
                     metadata: Mapping[str, str | int] | None = None) -> Path:
    """Stream tensors into a GGUF file one at a time (peak memory: one tensor); atomic rename."""
    gguf = _gguf()
    path, specs = Path(path), list(specs)
    if isinstance(file_type, str):
        file_type = int(gguf.LlamaFileType[file_type])
    elif file_type is None:
        file_type = _file_type(specs, gguf)
    tmp = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, val in (metadata or {}).items():
            (writer.add_string if isinstance(val, str) else writer.add_uint32)(key, val)
        for s in specs:  # all infos first (torch order; the writer stores dims innermost first)
            writer.add_tensor_info(s.name, *_info_shape_dtype(s), s.nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType[s.qtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for s in specs:
            writer.write_tensor_data(_as_bytes(s))
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        if tmp.exists():
            tmp.unlink()
    return path


def write_gguf(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor | GGUFWeight],
               arch: str = "wan", file_type: int | str | None = None,
               metadata: Mapping[str, str | int] | None = None) -> Path:
    """Write `tensors` (torch-order shapes) to a GGUF file; atomic (temp file, then rename)."""
    specs = [_spec_of(name, value) for name, value in tensors.items()]
    return write_gguf_specs(path, specs, arch, file_type, metadata)
