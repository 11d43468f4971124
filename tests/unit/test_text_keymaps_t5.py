"""HF UMT5EncoderModel <-> official umT5 names, checked at full size on the release manifests."""

import json

import pytest

from wanmoe.errors import CheckpointError
from wanmoe.loading.keymaps.t5 import HF_TIED, hf_state_to_official_names, hf_to_official, official_to_hf


def _tensors(manifests_dir, name):
    return json.loads((manifests_dir / name).read_text())["tensors"]


def test_transformers_manifest_maps_one_to_one_onto_official(manifests_dir):
    hf = _tensors(manifests_dir, "transformers-umt5-xxl-encoder.json")
    official = {t["name"]: tuple(t["shape"])
                for t in _tensors(manifests_dir, "official-umt5-xxl-encoder.json")}
    tied = {t["name"] for t in hf if t.get("tied_to")}
    assert tied == set(HF_TIED)  # the manifest's only alias is the one the table knows
    mapped = {}
    for t in hf:
        off = hf_to_official(t["name"])
        assert official[off] == tuple(t["shape"]), t["name"]
        if t["name"] not in tied:
            assert off not in mapped, f"{t['name']} and {mapped.get(off)} both map to {off}"
            mapped[off] = t["name"]
            assert official_to_hf(off) == t["name"]
    assert set(mapped) == set(official)  # every official tensor is covered, none twice
    shapes = hf_state_to_official_names({t["name"]: tuple(t["shape"]) for t in hf})
    assert shapes == official


def test_examples_from_the_spec():
    ffn = "encoder.block.7.layer.1.DenseReluDense"
    assert hf_to_official(f"{ffn}.wi_0.weight") == "blocks.7.ffn.gate.0.weight"
    assert hf_to_official(f"{ffn}.wi_1.weight") == "blocks.7.ffn.fc1.weight"
    assert hf_to_official(f"{ffn}.wo.weight") == "blocks.7.ffn.fc2.weight"
    assert hf_to_official("encoder.embed_tokens.weight") == "token_embedding.weight"
    assert official_to_hf("token_embedding.weight") == "shared.weight"
    assert official_to_hf("blocks.12.pos_embedding.embedding.weight") == (
        "encoder.block.12.layer.0.SelfAttention.relative_attention_bias.weight")


def test_tied_alias_alone_is_kept():
    # a file that stores only the alias still yields the embedding
    assert hf_state_to_official_names({"encoder.embed_tokens.weight": 1}) == {"token_embedding.weight": 1}


@pytest.mark.parametrize("bad", ["decoder.block.0.layer.0.SelfAttention.q.weight", "blocks.x.attn.q.weight",
                                 "encoder.block.0.layer.0.SelfAttention.q.bias"])
def test_unknown_names_raise(bad):
    with pytest.raises(CheckpointError, match="umT5"):
        hf_to_official(bad)
    with pytest.raises(CheckpointError, match="umT5"):
        official_to_hf(bad)
