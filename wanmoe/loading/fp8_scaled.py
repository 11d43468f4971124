"""Scaled-fp8 checkpoints: two tensor-source views, scales applied at load or kept (formats.md §3).

Legacy layout: a marker tensor `scaled_fp8`, fp8 `X.weight` plus fp32 `X.scale_weight` (and an
unused `X.scale_input`). New layout (`comfy_quant`): `X.weight_scale` (+ `X.input_scale`), the
per-layer format in `X.comfy_quant` (uint8 JSON bytes) or in the `_quantization_metadata` header
entry. Either way the real weight is `weight.float() * scale`; an fp8 weight is never handed out
without its scale, and the scale/marker tensors are consumed here (never "unexpected").

`ScaledFp8Source` applies the scales as each weight is read (the default load);
`KeepScaledFP8Source` (`--weights keep`) hands each scaled fp8 weight out as a runtime
`FP8Weight` for `FP8Linear`.
"""

from __future__ import annotations

import json

import torch

from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import split_aux
from wanmoe.loading.sources import TensorSource
from wanmoe.runtime.quant.apply import FP8Weight

_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_FLOAT8_FORMATS = ("float8_e4m3fn", "float8_e5m2")


def needs_scaling(source: TensorSource) -> bool:
    """True for a ComfyUI fp8_scaled or comfy_quant file (scales must be applied on load)."""
    kind = split_aux(source.keys())[2]
    return bool(kind) or "_quantization_metadata" in source.metadata


class ScaledFp8Source(TensorSource):
    """View of a scaled-fp8 source: scale tensors hidden, weights returned dequantised."""

    def __init__(self, inner: TensorSource) -> None:
        self.inner = inner
        self.paths = inner.paths
        self.metadata = inner.metadata
        names = inner.keys()
        core, aux, _ = split_aux(names)
        self._core = core
        self._check_formats(set(aux))
        self._scale: dict[str, str] = {}
        have = set(names)
        for n in aux:
            for suffix in (".scale_weight", ".weight_scale"):  # legacy / comfy_quant scale of X.weight
                if n.endswith(suffix):
                    w = n[: -len(suffix)] + ".weight"
                    if w not in have:
                        raise CheckpointError(f"{inner.file_of(n)}: scale {n!r} has no weight {w!r}")
                    self._scale[w] = n
        for n in core:
            if inner.dtype(n) in _FP8 and n not in self._scale:
                raise CheckpointError(f"{inner.file_of(n)}: fp8 weight {n!r} has no scale "
                                      f"({n.removesuffix('.weight')}.scale_weight / .weight_scale); "
                                      "the file is incomplete and would load wrong by the scale factor")

    def _check_formats(self, aux: set[str]) -> None:
        """Refuse a comfy_quant file whose per-layer format ("nvfp4", ...) is not a float8 one."""
        fmts: dict[str, str] = {}
        meta = self.metadata.get("_quantization_metadata")
        if meta:
            try:  # untrusted header text: any shape of JSON (or a non-string) is one error line
                layers = json.loads(meta).get("layers", {})
                fmts.update({k: str(v.get("format", "")) for k, v in layers.items() if isinstance(v, dict)})
            except (ValueError, TypeError, AttributeError, RecursionError) as e:
                raise CheckpointError(f"{self.paths[0]}: _quantization_metadata is not valid JSON ({e})") from None
        for n in aux:
            if n.endswith(".comfy_quant"):
                raw = bytes(self.inner.get(n).to(torch.uint8).reshape(-1).tolist())
                try:
                    fmts[n.removesuffix(".comfy_quant")] = str(json.loads(raw).get("format", ""))
                except (ValueError, TypeError, AttributeError, RecursionError) as e:
                    raise CheckpointError(f"{self.paths[0]}: {n!r} is not comfy_quant JSON ({e})") from None
        for layer, fmt in fmts.items():
            if fmt and fmt not in _FLOAT8_FORMATS:
                raise CheckpointError(f"{self.paths[0]}: layer {layer!r} uses comfy_quant format {fmt!r}; "
                                      f"only {', '.join(_FLOAT8_FORMATS)} are supported")

    def keys(self) -> list[str]:
        return list(self._core)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32 if name in self._scale else self.inner.dtype(name)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        scale_name = self._scale.get(name)
        if scale_name is None:
            return self.inner.get(name, dtype)
        w = self.inner.get(name).float()  # fp8 -> fp32 first: the scale is applied in fp32 (ComfyUI)
        w = w * self.inner.get(scale_name).float()  # per-tensor (or broadcastable per-row) scale
        return w if dtype is None else w.to(dtype)

    def nbytes(self, name: str) -> int | None:
        return self.inner.nbytes(name)

    def file_of(self, name: str):
        return self.inner.file_of(name)

    def close(self) -> None:
        self.inner.close()


class KeepScaledFP8Source(TensorSource):
    """TensorSource view of a scaled-fp8 file for `--weights keep`: fp8 weights stay fp8.

    Each fp8 `X.weight` with a scale (`X.weight_scale`: ours, per channel `[out, 1]`, or a
    per-tensor scalar; ComfyUI's legacy `X.scale_weight`) is handed out as an `FP8Weight`
    (dtype reported as the string "FP8", so `stream_load` routes it to `install_quantized`).
    Scale and marker tensors are hidden; everything else passes through unchanged.
    """

    def __init__(self, inner: TensorSource) -> None:
        self.inner, self.paths, self.metadata = inner, inner.paths, inner.metadata
        core, aux, _ = split_aux(inner.keys())
        ours = inner.metadata.get("wanmoe.quant") == "fp8_e4m3fn/per-channel"
        allowed = (".scale_weight", ".scale_input", "scaled_fp8") + ((".weight_scale",) if ours else ())
        other = [n for n in aux if not n.endswith(allowed)]
        if other or "_quantization_metadata" in inner.metadata:
            what = (other or ["_quantization_metadata"])[0]
            raise CheckpointError(f"{inner.path}: quantisation layout with {what!r} cannot be kept "
                                  "quantised; load it dequantised (--weights bf16)")
        have = set(inner.keys())
        self._scale = {}
        for n in aux:
            for suffix in (".weight_scale", ".scale_weight"):
                w = n[: -len(suffix)] + ".weight" if n.endswith(suffix) else None
                if w in have:
                    self._scale[w] = n
        for n in core:
            dt = inner.dtype(n)
            if dt in (torch.float8_e4m3fn, torch.float8_e5m2) and (dt != torch.float8_e4m3fn or n not in self._scale):
                raise CheckpointError(f"{inner.path}: fp8 tensor {n!r} ({dt}, scale "
                                      f"{self._scale.get(n)!r}) cannot be kept as e4m3fn with a scale; "
                                      "load it dequantised (--weights bf16)")
        self._core = core

    def keys(self) -> list[str]:
        return list(self._core)

    def shape(self, name):
        return self.inner.shape(name)

    def dtype(self, name):
        return "FP8" if name in self._scale else self.inner.dtype(name)

    def get(self, name, dtype=None):
        scale_name = self._scale.get(name)
        if scale_name is None:
            return self.inner.get(name, dtype)
        w = self.inner.get(name)
        scale = self.inner.get(scale_name).float().reshape(-1, 1).expand(w.shape[0], 1).contiguous()
        fp8 = FP8Weight(w, scale)
        return fp8 if dtype is None else fp8.dequantize(dtype)

    def nbytes(self, name):
        return self.inner.nbytes(name)

    def file_of(self, name):
        return self.inner.file_of(name)

    def close(self) -> None:
        self.inner.close()
