"""A tensor-source view that converts chosen tensors as they are read (quantise while loading).

`ConvertOnRead(inner, key_map, plan, convert)` passes every tensor through unchanged except the
ones `plan(official_name, shape)` picks: those are reported with the string dtype "converted",
so `stream.stream_load` hands them to its `install_quantized` callback instead of assigning
them, and `get` returns `convert(official_name, tensor)` where `tensor` was read in the dtype
`plan` returned. Only one picked tensor exists in float at a time: the loader installs the
converted value before it reads the next tensor. Tensors stored quantised in the file (GGUF
blocks, dtype already a string) are never picked; they reach the install callback as they are.

A scaled-fp8 source is wrapped in `fp8_scaled.ScaledFp8Source` first (scales applied on read,
exactly as `stream_load` would) so that the picked weights are the dequantised floats.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wanmoe.loading.fp8_scaled import ScaledFp8Source, needs_scaling
from wanmoe.loading.sources import TensorSource

CONVERTED = "converted"  # the dtype reported for picked tensors (a string: not assigned as is)
Plan = Callable[[str, tuple], "torch.dtype | None"]  # (official name, shape) -> read dtype or None
Convert = Callable[[str, torch.Tensor], object]  # (official name, float tensor) -> installable value


class ConvertOnRead(TensorSource):
    """View of `inner` whose picked float tensors come out converted (see the module doc)."""

    def __init__(self, inner: TensorSource, key_map: Callable[[str], str | None] | None,
                 plan: Plan, convert: Convert) -> None:
        if needs_scaling(inner) and not isinstance(inner, ScaledFp8Source):
            inner = ScaledFp8Source(inner)
        self.inner, self.paths, self.convert = inner, inner.paths, convert
        # scales are applied by the view above: the loader must not wrap this one again
        self.metadata = {k: v for k, v in inner.metadata.items() if k != "_quantization_metadata"}
        self._read: dict[str, tuple[str, torch.dtype]] = {}  # source name -> (official, read dtype)
        for name in inner.keys():
            official = key_map(name) if key_map else name
            if official is None or isinstance(inner.dtype(name), str):
                continue
            dtype = plan(official, tuple(inner.shape(name)))
            if dtype is not None:
                self._read[name] = (official, dtype)

    @property
    def picked(self) -> list[str]:
        """Official names of the tensors converted on read."""
        return [official for official, _ in self._read.values()]

    def keys(self) -> list[str]:
        return self.inner.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def dtype(self, name: str):
        return CONVERTED if name in self._read else self.inner.dtype(name)

    def nbytes(self, name: str) -> int | None:
        return self.inner.nbytes(name)

    def file_of(self, name: str):
        return self.inner.file_of(name)

    def get(self, name: str, dtype: torch.dtype | None = None):
        if name not in self._read:
            return self.inner.get(name, dtype)
        official, read_dtype = self._read[name]
        return self.convert(official, self.inner.get(name, read_dtype))

    def close(self) -> None:
        self.inner.close()
