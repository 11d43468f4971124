"""Open one component's weights for loading: the tensor source plus its source -> official key map.

The single place that turns a path into what `stream.stream_load` reads: the container is opened
(headers only), the checkpoint is detected and checked to be the component asked for, scaled-fp8
files are wrapped in the right view, and the rename table for the detected layout is chosen.
Used by `components.py` (the model loaders), `convert.py` and the pipeline (`--weights keep`).
"""

from __future__ import annotations

from pathlib import Path

from wanmoe.errors import CheckpointError
from wanmoe.loading.containers import open_tensors
from wanmoe.loading.detect import WHAT, Detection, detect_source
from wanmoe.loading.fp8_scaled import KeepScaledFP8Source, ScaledFp8Source, needs_scaling
from wanmoe.loading.keymaps import key_map_for
from wanmoe.loading.sources import TensorSource
from wanmoe.loading.stream import KeyMap

KINDS = ("dit", "text_encoder", "vae")


def open_detected(path_or_source: str | Path | TensorSource, kind: str, *,
                  keep_quantized: bool = False) -> tuple[TensorSource, KeyMap | None, Detection]:
    """`open_component` plus the Detection of the stored checkpoint (its dims build the model).

    A TensorSource passed in stays the caller's: it is wrapped when scaled fp8, never closed here.
    """
    if kind not in KINDS:
        raise ValueError(f"component kind {kind!r} is not one of {KINDS}")
    given = isinstance(path_or_source, TensorSource)
    src = path_or_source if given else open_tensors(path_or_source)
    try:
        det = detect_source(src)
        if det.component != kind:
            raise CheckpointError(f"{det.path} is {det.model} ({det.component}, {det.format}), not {WHAT[kind]}")
        key_map = key_map_for(det, src.keys())
        if needs_scaling(src):
            src = KeepScaledFP8Source(src) if keep_quantized and kind == "dit" else ScaledFp8Source(src)
    except BaseException:
        if not given:
            src.close()
        raise
    return src, key_map, det


def open_component(path_or_source: str | Path | TensorSource, kind: str, *,
                   keep_quantized: bool = False) -> tuple[TensorSource, KeyMap | None]:
    """(source, key map) of one component ("dit" | "text_encoder" | "vae") in any supported layout.

    Errors (CheckpointError) name the file when it is missing, unreadable or another component.
    Scaled-fp8 files (ComfyUI `fp8_scaled` / `comfy_quant`, wanmoe's own fp8) come wrapped: scales
    applied as each weight is read (`ScaledFp8Source`) or, with `keep_quantized=True` for a DiT,
    kept as `FP8Weight`s for `FP8Linear` (`KeepScaledFP8Source`; refused for layouts that cannot be
    kept). GGUF quantised tensors come out as `GGUFWeight`s either way; `stream_load` hands them to
    its `install_quantized` callback. The key map is None when the names are official already.
    The caller owns the returned source: close it (or use it as a context manager).
    """
    src, key_map, _ = open_detected(path_or_source, kind, keep_quantized=keep_quantized)
    return src, key_map
