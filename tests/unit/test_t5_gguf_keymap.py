"""llama.cpp T5 GGUF names <-> official umT5 names, at full size from the release manifest
(nothing allocated), checked against gguf-py's own T5 encoder tensor table."""

import json

import pytest

from wanmoe.configs import UMT5_XXL
from wanmoe.errors import CheckpointError
from wanmoe.loading.detect import MODEL_UMT5, detect_tensors
from wanmoe.loading.keymaps.t5_gguf import GGUF_T5_KEY_PAIRS, gguf_name, official_name

gguf = pytest.importorskip("gguf")


def _official(manifests_dir) -> dict[str, tuple]:
    data = json.loads((manifests_dir / "official-umt5-xxl-encoder.json").read_text())
    return {t["name"]: tuple(t["shape"]) for t in data["tensors"]}


def _llama_cpp_encoder_names(layers: int) -> set[str]:
    """What llama.cpp's converter names a T5 encoder's tensors: gguf-py's T5ENCODER table."""
    from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

    names = set()
    for t in MODEL_TENSORS[MODEL_ARCH.T5ENCODER]:
        base = TENSOR_NAMES[t]
        if base == "output":  # the LM head: not in encoder-only files
            continue
        names |= {f"{base.format(bid=i)}.weight" for i in range(layers)} if "{bid}" in base else {f"{base}.weight"}
    return names


def test_full_size_key_map_is_a_bijection_onto_llama_cpp_names(manifests_dir):
    official = _official(manifests_dir)
    assert len(official) == 2 + 10 * UMT5_XXL.num_layers  # embedding, final norm, 10 per block
    to_gguf = {n: gguf_name(n) for n in official}
    assert len(set(to_gguf.values())) == len(official)  # injective
    assert {official_name(g) for g in to_gguf.values()} == set(official)  # and back
    assert set(to_gguf.values()) == _llama_cpp_encoder_names(UMT5_XXL.num_layers)  # exactly llama.cpp's


def _gguf_entries(official: dict[str, tuple], linear_type: str = "Q8_0") -> dict[str, tuple]:
    """The header of a umt5-xxl-encoder-Q8_0.gguf as GGUFSource reports it: torch-order shapes,
    linears and the embedding quantised, norms F32, position tables F16 (never quantised)."""
    out = {}
    for name, shape in official.items():
        g = gguf_name(name)
        qtype = "float32" if len(shape) == 1 else "float16" if "attn_rel_b" in g else linear_type
        out[g] = (shape, qtype)
    return out


def _metadata(arch="t5encoder", **over) -> dict:
    meta = {"general.architecture": arch, f"{arch}.embedding_length": 4096,
            f"{arch}.feed_forward_length": 10240, f"{arch}.block_count": 24,
            f"{arch}.attention.head_count": 64, f"{arch}.attention.relative_buckets_count": 32,
            f"{arch}.context_length": 512}
    meta.update(over)
    return meta


@pytest.mark.parametrize("arch", ["t5encoder", "t5"])
def test_full_size_header_is_detected_as_umt5_xxl(manifests_dir, arch):
    det = detect_tensors(_gguf_entries(_official(manifests_dir)), _metadata(arch), container="gguf")
    assert (det.format, det.component, det.naming, det.model) == ("gguf", "text_encoder", "llama.cpp", MODEL_UMT5)
    cfg = det.t5_config()
    assert (cfg.vocab_size, cfg.dim, cfg.dim_attn, cfg.dim_ffn, cfg.num_heads, cfg.num_layers, cfg.num_buckets) == (
        256384, 4096, 4096, 10240, 64, 24, 32)
    # 5.68 B parameters (the model card's count); Q8_0 = 34 bytes per 32 weights -> ~6.04 GB
    q8 = det.dtypes["Q8_0"]["bytes"]
    assert 5.9e9 < q8 + det.dtypes["float16"]["bytes"] + det.dtypes["float32"]["bytes"] < 6.1e9


def test_metadata_that_contradicts_the_shapes_is_refused(manifests_dir):
    entries = _gguf_entries(_official(manifests_dir))
    with pytest.raises(CheckpointError, match="attention.head_count = 32"):
        detect_tensors(entries, _metadata(**{"t5encoder.attention.head_count": 32}), container="gguf")


def test_decoder_tensors_of_a_full_t5_file_are_skipped():
    assert official_name("dec.blk.0.attn_q.weight") is None
    assert official_name("dec.output_norm.weight") is None
    assert official_name("output.weight") is None
    assert official_name("enc.blk.23.ffn_gate.weight") == "blocks.23.ffn.gate.0.weight"


@pytest.mark.parametrize("bad", ["enc.blk.0.attn_output.weight", "blk.0.attn_q.weight", "enc.blk.x.attn_q.weight"])
def test_unknown_names_are_refused_with_the_table_named(bad):
    with pytest.raises(CheckpointError, match="t5_gguf.py"):
        official_name(bad)


def test_pairs_match_comfyui_gguf_rename_fragments():
    # ComfyUI-GGUF's loader renames llama.cpp T5 names to HF names by these fragments; composing
    # them with the HF -> official table must agree with ours (an independent route).
    from wanmoe.loading.keymaps.t5 import hf_to_official

    fragments = {"enc.": "encoder.", ".blk.": ".block.", "token_embd": "shared", "output_norm": "final_layer_norm",
                 "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k",
                 "attn_v": "layer.0.SelfAttention.v", "attn_o": "layer.0.SelfAttention.o",
                 "attn_norm": "layer.0.layer_norm",
                 "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
                 "ffn_up": "layer.1.DenseReluDense.wi_1", "ffn_down": "layer.1.DenseReluDense.wo",
                 "ffn_gate": "layer.1.DenseReluDense.wi_0", "ffn_norm": "layer.1.layer_norm"}
    for g_template, off_template in GGUF_T5_KEY_PAIRS:
        g = g_template.format(i=5)
        hf = g
        for a, b in fragments.items():
            hf = hf.replace(a, b)
        assert hf_to_official(hf) == off_template.format(i=5) == official_name(g)


def test_full_size_hf_names_through_llama_cpp_map_land_on_the_same_official_names(manifests_dir):
    # llama.cpp's converter (gguf-py TensorNameMap) renames the HF checkpoint; our map must take
    # each resulting name to the official name that the HF table gives for the same tensor
    from wanmoe.loading.keymaps.t5 import HF_TIED, hf_to_official

    data = json.loads((manifests_dir / "transformers-umt5-xxl-encoder.json").read_text())
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, UMT5_XXL.num_layers)
    seen = set()
    for t in data["tensors"]:
        if t["name"] in HF_TIED:  # the tied alias: llama.cpp stores the embedding once
            continue
        g = name_map.get_name(t["name"], try_suffixes=(".weight",))
        assert g is not None, t["name"]
        assert official_name(g) == hf_to_official(t["name"]), t["name"]
        seen.add(g)
    assert len(seen) == len(_official(manifests_dir))
