"""`describe_lora`: what a LoRA file is, from its header (for `wanmoe inspect`); reads no weights.

Only the `.alpha` scalars are read from the file; ranks, dtypes and targets come from the
safetensors header.
"""

from __future__ import annotations

import json
import re
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
        "naming": _naming(keys),
        "blocks": sorted({int(m.group(1)) for m in (_BLOCK_RE.search(k.module) for k in keys) if m}),
        "dim": _dim(keys, shapes),
        "expert": _expert_hint(source),
    }


_BLOCK_RE = re.compile(r"blocks[._](\d+)[._]")
MODEL_DIMS = {5120: "Wan2.2 T2V-A14B (dim 5120)", 3072: "Wan2.2 TI2V-5B (dim 3072)"}


def _naming(keys) -> str:
    """'official' or 'diffusers': which module names the keys use (matched against the A14B
    layout, both spellings, dotted and underscored, through the loader's own index)."""
    from wanmoe.configs import A14B_DIT
    from wanmoe.lora.formats import ModuleIndex, _choose_naming
    from wanmoe.runtime.quant.estimate import dit_entries

    cfg = A14B_DIT
    dims = {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim,
            "out_dim": cfg.out_dim, "patch_size": cfg.patch_size, "text_dim": cfg.text_dim,
            "freq_dim": cfg.freq_dim}
    return _choose_naming(list(keys), ModuleIndex(name for name, _ in dit_entries(dims)))


def _dim(keys, shapes) -> int | None:
    """The DiT width the LoRA was made for: the most common input width of its `down` factors
    (q, k, v, o and ffn.0 all read `dim`), None when it has no pairs."""
    widths = Counter(shapes[k.key][1][-1] for k in keys if k.role == "down" and len(shapes[k.key][1]) == 2)
    return widths.most_common(1)[0][0] if widths else None


def _expert_hint(source: str) -> str | None:
    """'high_noise' / 'low_noise' when the file name (or a parent folder) says so, else None."""
    if source.startswith("<"):
        return None
    from wanmoe.loading.detect import path_role

    return path_role(source)


def is_lora_file(path) -> bool:
    """True when most tensor names of a safetensors file are LoRA names (header only)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        names = [k for k in _header(p) if k != "__metadata__"]
    except CheckpointError:
        return False
    hits = sum(split_key(n) is not None for n in names)
    return bool(names) and hits * 2 >= len(names)


def _span(blocks: list[int]) -> str:
    if not blocks:
        return "none"
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0]}-{blocks[-1]} ({len(blocks)})"
    return f"{', '.join(map(str, blocks))} ({len(blocks)})"


def describe_text(info: dict) -> str:
    """The `wanmoe inspect` report of `describe_lora(...)`'s dict."""
    alphas = ", ".join(f"{a:g}" for a in info["alphas"]) if info["alphas"] else "none (alpha = rank, scale 1)"
    kinds = ", ".join(f"{k} {n}" for k, n in info["kinds"].items())
    dim = info.get("dim")
    model = MODEL_DIMS.get(dim, f"unknown (dim {dim})" if dim else "unknown (no low-rank pairs)")
    expert = info.get("expert")
    lines = [
        info["path"],
        "  format:    LoRA",
        f"  layout:    {info['layout']} (prefix {info['prefix']!r}"
        + (f", {' + '.join(info['pair_keys'])}" if info["pair_keys"] else "") + ")",
        f"  names:     {info.get('naming', '?')} module names",
        f"  rank:      {', '.join(map(str, info['ranks'])) or 'none (full deltas only)'}",
        f"  alpha:     {alphas}",
        f"  targets:   {info['targets']} layers: {kinds}",
        f"  blocks:    {_span(info.get('blocks', []))}",
        f"  model:     {model}",
        "  expert:    " + (f"{expert} (from the file name; apply with --lora-{expert.split('_')[0]})"
                          if expert else "not named in the file name (--lora applies it to every "
                                         "expert; --lora-high / --lora-low to one)"),
        f"  dtypes:    {', '.join(info['dtypes'])}",
        f"  tensors:   {info['tensors']}" + (f" ({info['unrecognised']} not LoRA tensors)"
                                              if info["unrecognised"] else ""),
    ]
    if info["extras"]:
        lines.append("  deltas:    " + ", ".join(f"{k} x{n}" for k, n in info["extras"].items()))
    if info["image_keys"]:
        lines.append(f"  note:      {info['image_keys']} Wan2.1 image tensors (k_img/v_img/img_emb): "
                     f"skipped on Wan2.2 T2V")
    return "\n".join(lines)


def _pair_style(key: str) -> str:
    for marker, style in _PAIR_STYLES:
        if marker in key:
            return style
    return "other"


def _role_of(keys, module: str) -> str:
    return next(k.role for k in keys if k.module == module)
