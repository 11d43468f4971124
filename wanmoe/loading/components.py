"""Load one component (DiT, umT5 encoder, VAE) from any supported layout, strictly, in eval mode.

Each loader opens the file (headers only), detects its naming, builds the model with parameters
on meta and streams the tensors into their target dtype and device (`stream.stream_load`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from wanmoe.configs import DiTConfig, VAEConfig
from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import Detection, detect_source  # detect_source re-exported (convert.py)
from wanmoe.loading.keymaps import key_map_for
from wanmoe.loading.sources import TensorSource, open_tensors
from wanmoe.loading.stream import InstallQuantized, KeyMap, empty_weights, stream_load


@contextlib.contextmanager
def _opened(source_or_path) -> Iterator[TensorSource]:
    """An already opened source as is, or a path opened here and closed on exit (also on errors)."""
    if isinstance(source_or_path, TensorSource):
        yield source_or_path
        return
    with open_tensors(source_or_path) as src:
        yield src


def _expect(det: Detection, component: str, what: str) -> None:
    if det.component != component:
        raise CheckpointError(f"{det.path} is {det.model} ({det.component}, {det.format}), not {what}")


def load_dit(source_or_path, cfg: DiTConfig, compute_dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", key_map: KeyMap | None = None, *,
             install_quantized: InstallQuantized | None = None) -> nn.Module:
    """WanDiT from official / prefixed / diffusers / fp8 / GGUF weights, stored per `storage_dtype`."""
    from wanmoe.models.dit import WanDiT

    with _opened(source_or_path) as src:
        if key_map is None:
            det = detect_source(src)
            _expect(det, "dit", "a Wan DiT")
            key_map = key_map_for(det, src.keys())
        with empty_weights():
            model = WanDiT(cfg)
        model.set_compute_dtype(compute_dtype)  # validates the dtype before any weight is read
        stream_load(model, src, dtype=compute_dtype, device=device, key_map=key_map,
                    install_quantized=install_quantized)
    return model.eval()


def load_text_encoder(path, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu") -> nn.Module:
    """UMT5Encoder from the official .pth or a HF safetensors folder/file; bf16 read as bf16."""
    from wanmoe.text.umt5 import UMT5Encoder

    with _opened(path) as src:
        det = detect_source(src)
        _expect(det, "text_encoder", "a umT5 text encoder")
        with empty_weights():
            model = UMT5Encoder(det.t5_config())
        stream_load(model, src, dtype=dtype, device=device, key_map=key_map_for(det, src.keys()))
    return model.eval()


def load_vae(path, cfg: VAEConfig | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> nn.Module:
    """Wan2.1 / Wan2.2 VAE from official .pth/.safetensors or a diffusers `vae/` folder."""
    from wanmoe.loading.checkpoint import vae_config_from_detection
    from wanmoe.vae import build_vae

    with _opened(path) as src:
        det = detect_source(src)
        _expect(det, "vae", "a Wan VAE")
        cfg = cfg or vae_config_from_detection(det)
        if cfg.version != det.dims["version"]:
            raise CheckpointError(f"{det.path} is a Wan{det.dims['version']} VAE but the config asks for "
                                  f"a Wan{cfg.version} VAE; pass a matching VAEConfig or none (read from the file)")
        with empty_weights():
            model = build_vae(cfg)
        stream_load(model, src, dtype=dtype, device=device, key_map=key_map_for(det, src.keys()))
    return model.eval()
