"""`describe_lora`: what a LoRA file is, from its header (for `wanmoe inspect`); reads no weights.

Only the `.alpha` scalars are read from the file; ranks, dtypes and targets come from the
safetensors header.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Mapping

from wanmoe.errors import CheckpointError
from wanmoe.lora.formats import _family, _is_image_key, split_key

# (substring of a module name in either naming, kind), first match wins
KINDS: tuple[tuple[str, str], ...] = (
    ("self_attn", "self_attn"), ("attn1", "self_attn"), ("cross_attn", "cross_attn"),
    ("attn2", "cross_attn"), ("ffn", "ffn"), ("text_embed", "text_embedding"),
    ("time_embed", "time_embedding"), ("time_proj", "time_projection"), ("head", "head"),
    ("proj_out", "head"), ("patch_embedding", "patch_embedding"), ("norm", "norm"),
)

_PAIR_STYLES: tuple[tuple[str, str], ...] = (
    (".lora_A.", "lora_A/lora_B"), (".lora_B.", "lora_A/lora_B"),
    (".lora_down.", "lora_down/lora_up"), (".lora_up.", "lora_down/lora_up"),
    (".lora.down.", "lora.down/lora.up"), (".lora.up.", "lora.down/lora.up"),
    (".lora_linear_layer.", "lora_linear_layer.down/up"),
)


def _header(path: Path) -> dict:
    """The safetensors JSON header: name -> {dtype, shape, data_offsets} (+ __metadata__)."""
    try:
        with path.open("rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            return json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise CheckpointError(f"LoRA file {str(path)!r} is not a readable safetensors file: {e}") from None


def _alphas(path: Path, names: list[str]) -> list[float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return [float(f.get_tensor(n).reshape(-1)[0].item()) for n in names]


def _kind(module: str, role: str) -> str:
    if _is_image_key(module):
        return "image (Wan2.1 I2V)"
    if role == "diff_m" or module.endswith("modulation"):
        return "modulation"
    for marker, kind in KINDS:
        if marker in module:
            return kind
    return "other"


def describe_lora(path_or_state) -> dict:
    """Layout, ranks, alphas, target count and kinds of a LoRA file (or an in-memory state dict)."""
    if not isinstance(path_or_state, Mapping) and Path(path_or_state).suffix != ".safetensors":
        from wanmoe.lora.formats import read_state

        source, state = read_state(path_or_state)  # a pickle has no header: read it whole
        return {**describe_lora(state), "path": source}
    if isinstance(path_or_state, Mapping):
        shapes = {k: (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in path_or_state.items()}
        alpha_of = {k: float(v.reshape(-1)[0].item()) for k, v in path_or_state.items()}
        source = "<state dict>"
    else:
        path = Path(path_or_state)
        if not path.is_file():
            raise CheckpointError(f"LoRA file {str(path)!r} does not exist")
        head = {k: v for k, v in _header(path).items() if k != "__metadata__"}
        shapes = {k: (v["dtype"], v["shape"]) for k, v in head.items()}
        alpha_names = [k for k in head if k.endswith(".alpha")]
        alpha_of = dict(zip(alpha_names, _alphas(path, alpha_names)))
        source = str(path)
    keys = [k for k in (split_key(n) for n in shapes) if k is not None]
    if not keys:
        raise CheckpointError(f"LoRA {source}: no tensor has a LoRA name (lora_A/B, lora_down/up, "
                              f"diff, diff_b, diff_m); is it a LoRA?")
    roles = Counter(k.role for k in keys)
    pair = sorted({_pair_style(k.key) for k in keys if k.role in ("down", "up")})
    ranks = sorted({shapes[k.key][1][0] for k in keys if k.role == "down"})
    alphas = sorted({alpha_of[k.key] for k in keys if k.role == "alpha"})
    modules = {k.module for k in keys}
    return {
        "path": source,
        "layout": "full-delta" if not pair and roles else _family(keys),
        "prefix": Counter(k.prefix for k in keys).most_common(1)[0][0],
        "pair_keys": pair,
        "ranks": ranks,
        "alphas": alphas or None,  # None: alpha = rank (scale 1)
        "targets": len(modules),
        "kinds": dict(sorted(Counter(_kind(m, _role_of(keys, m)) for m in modules).items())),
        "extras": {r: roles[r] for r in ("diff", "diff_b", "diff_m") if roles[r]},
        "image_keys": sum(_is_image_key(k.module) for k in keys),
        "dtypes": sorted({shapes[k.key][0] for k in keys if k.role != "alpha"}),
        "tensors": len(shapes),
        "unrecognised": len(shapes) - len(keys),
    }


def _pair_style(key: str) -> str:
    for marker, style in _PAIR_STYLES:
        if marker in key:
            return style
    return "other"


def _role_of(keys, module: str) -> str:
    return next(k.role for k in keys if k.module == module)
