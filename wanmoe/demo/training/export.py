"""Write trained weights as a wanmoe-native checkpoint folder (docs/architecture.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wanmoe.configs import ModelPreset, preset_to_dict


def _save(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous() for k, v in sd.items()}, str(path))
    path.chmod(0o644)  # package data: world-readable like the rest of the install


def write_folder(out: Path, preset: ModelPreset, experts: dict[str, dict], text_sd: dict,
                 vae_sd: dict, tokenizer) -> Path:
    """`wanmoe.json` + one safetensors per expert + text encoder + VAE + `tokenizer.json`."""
    out.mkdir(parents=True, exist_ok=True)
    names = [e.name for e in preset.experts]
    if sorted(names) != sorted(experts):
        raise ValueError(f"experts {sorted(experts)} do not match the preset's {names}")
    files = {}
    for name in names:
        files[name] = f"{name}.safetensors"
        _save(experts[name], out / files[name])
    files["text_encoder"] = "text_encoder.safetensors"
    _save(text_sd, out / files["text_encoder"])
    files["vae"] = "vae.safetensors"
    _save(vae_sd, out / files["vae"])
    files["tokenizer"] = "tokenizer.json"
    tokenizer.save(str(out / files["tokenizer"]))
    meta = {"format": "wanmoe", "version": 1, "preset": preset_to_dict(preset), "files": files}
    (out / "wanmoe.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def folder_bytes(out: Path) -> int:
    """Total size of the files in a folder."""
    return sum(p.stat().st_size for p in Path(out).iterdir() if p.is_file())


def strip_ema(state: dict) -> dict[str, torch.Tensor]:
    """EMA weights (plain tensors) of a saved module state dict."""
    return {k: v.clone() for k, v in state.items()}
