"""Load one component (DiT, umT5 encoder, VAE) from any supported layout, strictly, in eval mode.

Each loader opens the weights through `opener.open_detected` (headers only: layout, component,
key map), builds the model with parameters on meta and streams the tensors into their target
dtype and device (`stream.stream_load`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from wanmoe.configs import DiTConfig, VAEConfig
from wanmoe.errors import CheckpointError
from wanmoe.loading.checkpoint import vae_config_from_detection
from wanmoe.loading.containers import open_tensors
from wanmoe.loading.detect import Detection
from wanmoe.loading.opener import open_detected
from wanmoe.loading.sources import TensorSource
from wanmoe.loading.stream import InstallQuantized, KeyMap, empty_weights, stream_load


@contextlib.contextmanager
def _opened(source_or_path, kind: str,
            key_map: KeyMap | None = None) -> Iterator[tuple[TensorSource, KeyMap | None, Detection | None]]:
    """(source, key map, detection) through `opener.open_detected`, or with the caller's key map
    as given (no detection). A path is opened here and closed on exit (also on errors); an
    already opened source stays open (it is the caller's)."""
    if key_map is not None:
        src, det = (source_or_path if isinstance(source_or_path, TensorSource)
                    else open_tensors(source_or_path)), None
    else:
        src, key_map, det = open_detected(source_or_path, kind)
    try:
        yield src, key_map, det
    finally:
        if not isinstance(source_or_path, TensorSource):
            src.close()


def load_dit(source_or_path, cfg: DiTConfig, compute_dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", key_map: KeyMap | None = None, *,
             install_quantized: InstallQuantized | None = None, on_read=None) -> nn.Module:
    """WanDiT from official / prefixed / diffusers / fp8 / GGUF weights, stored per `storage_dtype`.

    Give a source and its `key_map` from `opener.open_component` to load it as opened (e.g. kept
    scaled fp8); without a key map the weights are detected here. `on_read(source, key_map)`
    returns the view the tensors are streamed from (`on_read.ConvertOnRead`: quantise while loading).
    """
    from wanmoe.models.dit import WanDiT

    with _opened(source_or_path, "dit", key_map) as (src, key_map, _):
        with empty_weights():
            model = WanDiT(cfg)
        model.set_compute_dtype(compute_dtype)  # validates the dtype before any weight is read
        if on_read is not None:
            src = on_read(src, key_map)
        stream_load(model, src, dtype=compute_dtype, device=device, key_map=key_map,
                    install_quantized=install_quantized)
    return model.eval()


class _QuantizeOnRead(TensorSource):
    """View of a umT5 source whose block linear weights come out quantised per output channel
    (`ChannelWeight`, fp8 or int8) as they are read: one float weight in memory at a time."""

    def __init__(self, inner: TensorSource, key_map: KeyMap | None, kind: str) -> None:
        from wanmoe.runtime.quant.text import is_t5_linear_weight

        self.inner, self.kind = inner, kind
        self.paths, self.metadata = inner.paths, inner.metadata
        self._quant = {n for n in inner.keys()
                       if (off := (key_map(n) if key_map else n)) is not None and is_t5_linear_weight(off)}

    def keys(self) -> list[str]:
        return self.inner.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def dtype(self, name: str):
        return self.kind if name in self._quant else self.inner.dtype(name)

    def nbytes(self, name: str) -> int | None:
        return self.inner.nbytes(name)

    def file_of(self, name: str):
        return self.inner.file_of(name)

    def get(self, name: str, dtype: torch.dtype | None = None):
        from wanmoe.runtime.quant.text import quantize_channel

        if name not in self._quant:
            return self.inner.get(name, dtype)
        stored = self.inner.get(name, None if isinstance(self.inner.dtype(name), str) else torch.float32)
        return quantize_channel(stored, self.kind)

    def close(self) -> None:
        self.inner.close()


def load_text_encoder(path, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", *, weights: str | None = None,
                      workspace=None) -> nn.Module:
    """UMT5Encoder from the official .pth, a HF safetensors folder/file or a llama.cpp GGUF.

    Float tensors are stored in `dtype` (bf16 read as bf16). GGUF-quantised linears stay
    quantised (`GGUFLinear`, dequantised per matmul, sharing `workspace`); so does a quantised
    token embedding (`GGUFEmbedding`: each lookup dequantises its rows into `dtype`). `weights="fp8"|"int8"` quantises the block
    linears per output channel as each one is read (`FP8Linear` / `Int8Linear`).
    """
    from wanmoe.runtime.quant.text import check_text_weights, text_installer
    from wanmoe.text.umt5 import UMT5Encoder

    check_text_weights(weights)
    with _opened(path, "text_encoder") as (src, key_map, det):
        with empty_weights():
            model = UMT5Encoder(det.t5_config())
        read = _QuantizeOnRead(src, key_map, weights) if weights else src
        stream_load(model, read, dtype=dtype, device=device, key_map=key_map,
                    install_quantized=text_installer(dtype, device, workspace))
    return model.eval()


def text_encoder_bytes(path, dtype: torch.dtype = torch.bfloat16, weights: str | None = None) -> int:
    """Bytes `load_text_encoder(path, dtype, weights=weights)` will hold, from the headers only:
    GGUF-quantised linears and token embedding at their stored size, fp8/int8 linears one byte per weight plus a
    float32 scale per row, everything else in `dtype`."""
    from wanmoe.runtime.quant.text import EMBEDDING, is_t5_linear_weight

    total = 0
    with _opened(path, "text_encoder") as (src, key_map, _):
        for name in src.keys():
            off = key_map(name) if key_map else name
            if off is None:
                continue
            shape = tuple(src.shape(name))
            numel = math.prod(shape)
            if is_t5_linear_weight(off) and weights:
                total += numel + shape[0] * 4
            elif (is_t5_linear_weight(off) or off == EMBEDDING) and isinstance(src.dtype(name), str):
                total += src.nbytes(name)  # kept quantised
            else:
                total += numel * dtype.itemsize
    return total


def load_vae(path, cfg: VAEConfig | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> nn.Module:
    """Wan2.1 / Wan2.2 VAE from official .pth/.safetensors or a diffusers `vae/` folder."""
    from wanmoe.vae import build_vae

    with _opened(path, "vae") as (src, key_map, det):
        cfg = cfg or vae_config_from_detection(det)
        if cfg.version != det.dims["version"]:
            raise CheckpointError(f"{det.path} is a Wan{det.dims['version']} VAE but the config asks for "
                                  f"a Wan{cfg.version} VAE; pass a matching VAEConfig or none (read from the file)")
        with empty_weights():
            model = build_vae(cfg)
        stream_load(model, src, dtype=dtype, device=device, key_map=key_map)
    return model.eval()
