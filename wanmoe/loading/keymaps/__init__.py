"""Source-name -> official-name maps per component and layout, and the choice of one for a checkpoint.

The rename tables are declarative, one module per component: `dit.py` (diffusers
`WanTransformer3DModel`), `t5.py` (HF `UMT5EncoderModel`), `t5_gguf.py` (llama.cpp T5 GGUF
names), `vae.py` (diffusers
`AutoencoderKLWan`). `key_map_for` picks one from a `Detection` and composes it with prefix
stripping. A returned map may answer None for a name, meaning "a duplicate of another stored
tensor: skip it".
"""

from __future__ import annotations

from collections.abc import Iterable

from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import Detection
from wanmoe.loading.keymaps import dit, t5, t5_gguf, vae
from wanmoe.loading.stream import KeyMap

__all__ = ["key_map_for", "dit", "t5", "t5_gguf", "vae"]


def _strip(prefix: str) -> KeyMap:
    return lambda n: n[len(prefix):] if prefix and n.startswith(prefix) else n


def _dit_map(det: Detection) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming == "diffusers":
        return lambda n: dit.diffusers_to_official(strip(n))
    return strip


def _t5_map(det: Detection, names: Iterable[str]) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming == "llama.cpp":  # umT5 encoder GGUF files (token_embd, enc.blk.N.attn_q, ...)
        return lambda n: t5_gguf.official_name(strip(n))
    if det.naming != "hf":
        return strip
    stored = {strip(n) for n in names}

    def key_map(n: str) -> str | None:
        n = strip(n)
        if n in t5.HF_TIED and t5.HF_TIED[n] in stored:  # HF stores the embedding twice
            return None
        return t5.hf_to_official(n)

    return key_map


def _vae_map(det: Detection) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming == "diffusers":
        version = det.dims["version"]
        return lambda n: vae.diffusers_to_official(strip(n), version)
    return strip


def key_map_for(det: Detection, names: Iterable[str] = ()) -> KeyMap | None:
    """Source -> official name map for a detected component (None: names are already official)."""
    if det.component == "dit":
        km = _dit_map(det)
    elif det.component == "text_encoder":
        km = _t5_map(det, names)
    elif det.component == "vae":
        km = _vae_map(det)
    else:
        raise CheckpointError(f"{det.path}: no key map for a {det.component} checkpoint ({det.format})")
    if det.naming == "official" and not det.prefix:
        return None
    return km
