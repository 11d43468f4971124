"""Tensor sources: one read-only view over a checkpoint's tensors, whatever the container.

`TensorSource` is the interface; this module holds the safetensors (single and sharded) and
pickle readers, `gguf.py` the GGUF one. `containers.open_tensors(path)` picks the reader for a
path. Opening reads headers only; tensor data is read one tensor at a time by `get`.

Safetensors headers are parsed and validated here (truncation is caught on open); data is read
with plain file reads instead of through a memory map (`safe_open`): touched pages of a mapped
file count in the process RSS until unmapped, so a mapped fp32 file loaded as bf16 shows
fp32 + bf16 resident. Plain reads go through the page cache, which the kernel can drop. Reads
that are cast on the way in go through one reusable staging buffer (`Staging`), so RSS stays at
the loaded weights plus the largest source tensor.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from wanmoe.errors import CheckpointError

# safetensors header dtype codes -> torch dtypes (F8 codes map to the torch float8 flavours).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """Short dtype name used in histograms and manifests ("float32", "float8_e4m3fn", "Q4_K")."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


class TensorSource:
    """Read-only name -> tensor view over one checkpoint (file or shard set)."""

    metadata: dict[str, str]
    paths: tuple[Path, ...]

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype | str:
        raise NotImplementedError

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self, name: str) -> int | None:
        """Stored bytes of one tensor (None when the container does not say)."""
        dt = self.dtype(name)
        return None if isinstance(dt, str) else math.prod(self.shape(name)) * dt.itemsize

    def close(self) -> None:
        """Release file handles (safe to call twice)."""

    @property
    def path(self) -> Path:
        return self.paths[0]

    def file_of(self, name: str) -> Path:
        """File holding tensor `name` (the shard for sharded sets); used in error messages."""
        return self.paths[0]

    def __contains__(self, name: str) -> bool:
        return name in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def entries(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype name)} of every tensor: what detection works from."""
        return {k: (self.shape(k), dtype_name(self.dtype(k))) for k in self.keys()}


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


class Staging:
    """One reusable byte buffer for reads that are cast on the way in (see `SafetensorsFile.get`).

    Reading each source tensor into a fresh allocation and freeing it after the cast fragments
    the heap (glibc keeps the holes), so RSS grew by a full source tensor per tensor; a single
    staging buffer keeps the overhead at the largest source tensor.
    """

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def take(self, nbytes: int, reserve: int) -> torch.Tensor:
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = None  # free the old buffer before allocating the larger one
            self.buf = torch.empty(max(nbytes, reserve), dtype=torch.uint8)
        return self.buf[:nbytes]

    def release(self) -> None:
        self.buf = None


class SafetensorsFile(TensorSource):
    """One `.safetensors` file: header parsed and validated on open, data read per tensor."""

    def __init__(self, path: str | Path, staging: Staging | None = None) -> None:
        self.paths = (Path(path),)
        self._fh = None
        self._header, self._data_start = _read_st_header(self.paths[0])
        self.metadata = self._header.pop("__metadata__", None) or {}
        self._staging = staging or Staging()
        self._reserve: dict[str, int] = {}

    def keys(self) -> list[str]:
        return list(self._header)

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def _info(self, name: str) -> dict:
        try:
            return self._header[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in {self.paths[0]}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return ST_DTYPES[self._info(name)["dtype"]]

    def nbytes(self, name: str) -> int:
        a, b = self._info(name)["data_offsets"]
        return b - a

    def _largest(self, code: str) -> int:
        """Bytes of the largest tensor stored as `code`: the staging size that serves them all."""
        if code not in self._reserve:
            self._reserve[code] = max(self.nbytes(n) for n, i in self._header.items() if i["dtype"] == code)
        return self._reserve[code]

    def _read(self, name: str, a: int, b: int, dst: torch.Tensor) -> None:
        """Read bytes [a, b) of the data block into the uint8 tensor `dst`."""
        if self._fh is None:
            self._fh = open(self.paths[0], "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self._fh.seek(self._data_start + a)
        got = self._fh.readinto(memoryview(dst.numpy()))
        if got != b - a:
            raise CheckpointError(f"{self.paths[0]}: tensor {name!r} is cut short "
                                  f"({got} of {b - a} bytes); the file is truncated")

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        info = self._info(name)
        a, b = info["data_offsets"]
        src_dt, shape = ST_DTYPES[info["dtype"]], info["shape"]
        if dtype is None or dtype == src_dt or b == a:
            out = torch.empty(shape, dtype=src_dt)
            if b > a:
                self._read(name, a, b, out.reshape(-1).view(torch.uint8))
            return _cast(out, dtype)
        stage = self._staging.take(b - a, self._largest(info["dtype"]))
        self._read(name, a, b, stage)
        return stage.view(src_dt).reshape(shape).to(dtype)  # the cast allocates the only new tensor

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._staging.release()


def _read_st_header(path: Path) -> tuple[dict, int]:
    """Parse and validate a safetensors header: (header dict, byte offset of the data block)."""
    from wanmoe.loading.safetensors_header import read_header  # every check lives there

    return read_header(path)


class ShardedSafetensors(TensorSource):
    """A sharded safetensors set described by `*.safetensors.index.json` (`weight_map`)."""

    def __init__(self, index_path: str | Path) -> None:
        index_path = Path(index_path)
        from wanmoe.loading.json_files import check_index, read_object

        index = read_object(index_path, "safetensors index")
        weight_map: dict[str, str] = check_index(index_path, index)
        shard_names = sorted(set(weight_map.values()))
        missing = [s for s in shard_names if not (index_path.parent / s).is_file()]
        if missing:
            raise CheckpointError(f"shard {missing[0]} listed in {index_path} is missing from "
                                  f"{index_path.parent} ({len(missing)} of {len(shard_names)} shards missing)")
        staging = Staging()  # shared: one staging buffer for the whole set, not one per shard
        self._shards = {s: SafetensorsFile(index_path.parent / s, staging) for s in shard_names}
        self._where: dict[str, SafetensorsFile] = {}
        for name, shard in weight_map.items():
            f = self._shards[shard]
            if name not in f:
                raise CheckpointError(f"{index_path} lists tensor {name!r} in {f.path}, which lacks it")
            self._where[name] = f
        self.paths = (index_path, *(f.path for f in self._shards.values()))
        self.metadata = dict(index.get("metadata") or {})
        for f in self._shards.values():
            self.metadata.update(f.metadata)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _f(self, name: str) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in {self.paths[0]}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._f(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._f(name).dtype(name)

    def nbytes(self, name: str) -> int:
        return self._f(name).nbytes(name)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._f(name).get(name, dtype)

    def file_of(self, name: str) -> Path:
        return self._f(name).path

    def close(self) -> None:
        for f in self._shards.values():
            f.close()


class PickleSource(TensorSource):
    """A `torch.save`d state dict, opened with `torch.load(mmap=True, weights_only=True)`."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.paths = (path,)
        self.metadata = {}
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} does not exist")
        sd = _torch_load(path)
        for wrapper in ("state_dict", "model", "module"):  # common training-checkpoint wrappers
            if isinstance(sd, dict) and set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
                sd = sd[wrapper]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{path} does not hold a state dict of tensors (expected a dict of "
                                  f"name -> tensor, optionally under 'state_dict', 'model' or 'module')")
        self._sd: dict[str, torch.Tensor] = sd

    def keys(self) -> list[str]:
        return list(self._sd)

    def __contains__(self, name: str) -> bool:
        return name in self._sd

    def _t(self, name: str) -> torch.Tensor:
        try:
            return self._sd[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in {self.paths[0]}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t(name).dtype

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return _cast(self._t(name), dtype)

    def close(self) -> None:
        self._sd = {}


def _torch_load(path: Path):
    from wanmoe.loading.pth_guard import load_weights_only  # one-line errors for any bad file

    return load_weights_only(path)
