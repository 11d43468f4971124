"""Checks of the small checkpoint writers (wanmoe.testing.small) against the real layouts."""

from __future__ import annotations

import json
import re

from wanmoe.testing.small import TINY_VAE21, TINY_VAE22, dit_state, t5_state, vae_state



def test_tiny_official_names_match_the_real_layout(manifests_dir):
    """Our tiny DiT/T5/VAE name sets equal the manifests' with the block count cut down."""
    real = json.loads((manifests_dir / "official-wan22-t2v-a14b-dit.json").read_text())
    keep = {t["name"] for t in real["tensors"] if not re.match(r"blocks\.([2-9]|\d\d)\.", t["name"])}
    assert set(dit_state()) == keep
    real = json.loads((manifests_dir / "official-umt5-xxl-encoder.json").read_text())
    keep = {t["name"] for t in real["tensors"] if not re.match(r"blocks\.([2-9]|\d\d)\.", t["name"])}
    assert set(t5_state()) == keep
    for cfg, f in ((TINY_VAE21, "official-wan21-vae.json"), (TINY_VAE22, "official-wan22-vae.json")):
        real = json.loads((manifests_dir / f).read_text())
        assert set(vae_state(cfg)) == {t["name"] for t in real["tensors"]}
