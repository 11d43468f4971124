"""VAE key maps official <-> diffusers at full size, against the shared manifests."""

import json

import pytest

from wanmoe.errors import CheckpointError
from wanmoe.loading.keymaps.vae import diffusers_to_official, official_to_diffusers, to_official


def _load(manifests_dir, name):
    return json.loads((manifests_dir / name).read_text())["tensors"]


def test_wan21_map_file(manifests_dir):
    rows = _load(manifests_dir, "map-official-to-diffusers-wan21-vae.json")
    assert len(rows) == 194
    for r in rows:
        assert official_to_diffusers(r["name"], "2.1") == r["diffusers_name"]
        assert diffusers_to_official(r["diffusers_name"], "2.1") == r["name"]
    diffusers = {t["name"]: t["shape"] for t in _load(manifests_dir, "diffusers-wan21-vae.json")}
    assert {r["diffusers_name"]: r["shape"] for r in rows} == diffusers


def test_wan22_bijection_with_shapes(manifests_dir):
    official = _load(manifests_dir, "official-wan22-vae.json")
    diffusers = {t["name"]: t["shape"] for t in _load(manifests_dir, "diffusers-wan22-vae.json")}
    mapped = {official_to_diffusers(t["name"], "2.2"): t["shape"] for t in official}
    assert len(mapped) == len(official) == len(diffusers) == 196
    assert mapped == diffusers  # 1:1 onto the diffusers names, equal shapes
    for t in official:
        assert diffusers_to_official(official_to_diffusers(t["name"], "2.2"), "2.2") == t["name"]


def test_unknown_names_and_layouts_are_errors():
    with pytest.raises(CheckpointError, match="encoder.bogus.weight"):
        official_to_diffusers("encoder.bogus.weight", "2.1")
    with pytest.raises(CheckpointError, match="Wan2.2"):
        diffusers_to_official("encoder.down_blocks.5.resample.1.weight", "2.2")  # a 2.1-only layout
    with pytest.raises(CheckpointError, match="version"):
        official_to_diffusers("conv1.weight", "3.0")
    assert to_official("decoder.conv_in.weight", "2.2", "diffusers") == "decoder.conv1.weight"
    assert to_official("conv2.bias", "2.1") == "conv2.bias"
    with pytest.raises(CheckpointError, match="layout"):
        to_official("conv2.bias", "2.1", "comfy")
