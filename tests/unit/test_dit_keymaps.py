"""Official <-> diffusers DiT key map at full A14B size (shared manifest) and its helpers."""

import json

import pytest
import torch

from wanmoe import configs
from wanmoe.errors import CheckpointError
from wanmoe.loading.keymaps import dit as K
from wanmoe.models.dit import WanDiT


@pytest.fixture(scope="module")
def mapping(manifests_dir):
    data = json.loads((manifests_dir / "map-official-to-diffusers-wan22-t2v-a14b-transformer.json").read_text())
    return {t["name"]: t["diffusers_name"] for t in data["tensors"]}


def test_full_size_map_both_directions(mapping):
    assert len(mapping) == 1095
    for official, diffusers in mapping.items():
        assert K.official_to_diffusers(official) == diffusers
        assert K.diffusers_to_official(diffusers) == official
    assert len(set(mapping.values())) == len(mapping)  # bijection


def test_diffusers_manifest_covered(manifests_dir, mapping):
    data = json.loads((manifests_dir / "diffusers-wan22-t2v-a14b-transformer.json").read_text())
    names = {t["name"] for t in data["tensors"]}
    assert {K.official_to_diffusers(n) for n in mapping} == names


def test_model_state_dict_names_are_official(mapping):
    with torch.device("meta"):
        model = WanDiT(configs.A14B_DIT)
    assert set(model.state_dict()) == set(mapping)


def test_prefixes_and_layouts():
    name = "blocks.3.self_attn.norm_q.weight"
    for pre in ("model.diffusion_model.", "diffusion_model.", "model.", ""):
        assert K.strip_prefix(pre + name) == name
        assert K.to_official(pre + name, "official") == name
    assert K.common_prefix(["model.diffusion_model.a", "model.diffusion_model.b"]) == "model.diffusion_model."
    assert K.common_prefix(["model.a", "b"]) == ""
    assert K.to_official("blocks.3.attn1.norm_q.weight", "diffusers") == name
    assert K.to_official("scale_shift_table", "diffusers") == "head.modulation"


def test_unknown_keys_raise():
    with pytest.raises(CheckpointError, match="blocks.0.img_emb"):
        K.official_to_diffusers("blocks.0.img_emb.weight")
    with pytest.raises(CheckpointError, match="attn1.norm_added_k"):
        K.diffusers_to_official("blocks.0.attn1.norm_added_k.weight")
    with pytest.raises(CheckpointError, match="layout"):
        K.to_official("head.modulation", "comfy")
