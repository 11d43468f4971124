"""DiT key names: official Wan <-> diffusers `WanTransformer3DModel` (formats.md §1).

The table is declarative: one (official, diffusers) template pair per tensor family, `{i}` a block
index, `{p}` weight|bias. Each template matches a whole name, so the map is a bijection by
construction (checked at full size against tests/data/manifests). ComfyUI and GGUF
files use the official names, sometimes behind a `model.diffusion_model.` prefix.
"""

from __future__ import annotations

import re

from wanmoe.errors import CheckpointError
from wanmoe.loading.renames import SAVE_PREFIXES as DIT_PREFIXES  # noqa: F401 (re-exported)
from wanmoe.loading.renames import common_prefix, strip_prefix  # noqa: F401 (re-exported)

# (official template, diffusers template)
DIT_RENAMES: tuple[tuple[str, str], ...] = (
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("blocks.{i}.self_attn.q.{p}", "blocks.{i}.attn1.to_q.{p}"),
    ("blocks.{i}.self_attn.k.{p}", "blocks.{i}.attn1.to_k.{p}"),
    ("blocks.{i}.self_attn.v.{p}", "blocks.{i}.attn1.to_v.{p}"),
    ("blocks.{i}.self_attn.o.{p}", "blocks.{i}.attn1.to_out.0.{p}"),
    ("blocks.{i}.self_attn.norm_q.weight", "blocks.{i}.attn1.norm_q.weight"),
    ("blocks.{i}.self_attn.norm_k.weight", "blocks.{i}.attn1.norm_k.weight"),
    ("blocks.{i}.cross_attn.q.{p}", "blocks.{i}.attn2.to_q.{p}"),
    ("blocks.{i}.cross_attn.k.{p}", "blocks.{i}.attn2.to_k.{p}"),
    ("blocks.{i}.cross_attn.v.{p}", "blocks.{i}.attn2.to_v.{p}"),
    ("blocks.{i}.cross_attn.o.{p}", "blocks.{i}.attn2.to_out.0.{p}"),
    ("blocks.{i}.cross_attn.norm_q.weight", "blocks.{i}.attn2.norm_q.weight"),
    ("blocks.{i}.cross_attn.norm_k.weight", "blocks.{i}.attn2.norm_k.weight"),
    ("blocks.{i}.norm3.{p}", "blocks.{i}.norm2.{p}"),  # the only affine norm (before cross-attn)
    ("blocks.{i}.ffn.0.{p}", "blocks.{i}.ffn.net.0.proj.{p}"),
    ("blocks.{i}.ffn.2.{p}", "blocks.{i}.ffn.net.2.{p}"),
)


LAYOUTS = ("official", "diffusers")

_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", _FIELDS["i"]).replace(r"\{p\}", _FIELDS["p"])
    return re.compile(f"^{pattern}$")


_OFFICIAL_RULES = tuple((_compile(o), d) for o, d in DIT_RENAMES)
_DIFFUSERS_RULES = tuple((_compile(d), o) for o, d in DIT_RENAMES)


def _rename(name: str, rules, source: str) -> str:
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict())
    raise CheckpointError(f"DiT tensor {name!r} is not a known {source} DiT key; "
                          f"see wanmoe/loading/keymaps/dit.py for the accepted names")


def official_to_diffusers(name: str) -> str:
    """Official Wan DiT name -> diffusers WanTransformer3DModel name."""
    return _rename(name, _OFFICIAL_RULES, "official")


def diffusers_to_official(name: str) -> str:
    """diffusers WanTransformer3DModel name -> official Wan DiT name."""
    return _rename(name, _DIFFUSERS_RULES, "diffusers")


def to_official(name: str, layout: str = "official") -> str:
    """Canonical official name of a tensor stored in `layout` ("official" incl. ComfyUI/GGUF, "diffusers")."""
    if layout == "official":
        bare = strip_prefix(name)
        official_to_diffusers(bare)  # validates: raises CheckpointError on an unknown key
        return bare
    if layout == "diffusers":
        return diffusers_to_official(strip_prefix(name))
    raise CheckpointError(f"DiT key layout {layout!r} is unknown; choose one of {list(LAYOUTS)}")
