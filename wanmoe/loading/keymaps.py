"""Pick the source-name -> official-name map for a detected checkpoint (dispatch only).

The rename tables live in `keymaps_dit.py`, `keymaps_t5.py` and `keymaps_vae.py`; this module
only chooses one from a `Detection` and composes it with prefix stripping. A returned map may
answer None for a name, meaning "a duplicate of another stored tensor: skip it".
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import Detection
from wanmoe.loading.stream import KeyMap


def _strip(prefix: str) -> KeyMap:
    return lambda n: n[len(prefix):] if prefix and n.startswith(prefix) else n


def _import(module: str, attr: str):
    try:
        return getattr(importlib.import_module(f"wanmoe.loading.{module}"), attr)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"this checkpoint layout needs wanmoe.loading.{module}.{attr}, "
                              f"which is unavailable ({e})") from None


def _dit_map(det: Detection) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming == "diffusers":
        to_off = _import("keymaps_dit", "diffusers_to_official")
        return lambda n: to_off(strip(n))
    return strip


def _t5_map(det: Detection, names: Iterable[str]) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming != "hf":
        return strip
    to_off = _import("keymaps_t5", "hf_to_official")
    tied = _import("keymaps_t5", "HF_TIED")  # HF stores the embedding twice: alias -> stored name
    stored = {strip(n) for n in names}

    def key_map(n: str) -> str | None:
        n = strip(n)
        if n in tied and tied[n] in stored:
            return None
        return to_off(n)

    return key_map


def _vae_map(det: Detection) -> KeyMap:
    strip = _strip(det.prefix)
    if det.naming == "diffusers":
        to_off = _import("keymaps_vae", "diffusers_to_official")
        version = det.dims["version"]
        return lambda n: to_off(strip(n), version)
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
