"""load_lora / describe_lora: every downloaded layout parses to the same patches on official
module paths; full deltas; errors and warnings name the file."""

import warnings

import pytest
import torch
from helpers_dit import TINY, randomize_
from helpers_lora import LAYOUTS, block_modules, lora_factors, write_layout
from safetensors.torch import save_file

from wanmoe.errors import CheckpointError
from wanmoe.lora import LoRAWarning, describe_lora, load_lora
from wanmoe.models.dit import WanDiT


@pytest.fixture(scope="module")
def state():
    return randomize_(WanDiT(TINY), 0).state_dict()


@pytest.fixture(scope="module")
def keys(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def factors(state):
    return lora_factors(state, block_modules(TINY.num_layers), rank=4, seed=1)


def _quiet_load(sd, keys, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file must not warn
        return load_lora(sd, keys, **kw)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_gives_the_same_patches(layout, factors, keys):
    lora = _quiet_load(write_layout(factors, layout, alpha=2.0), keys)
    assert set(lora.patches) == set(factors)
    for module, (down, up) in factors.items():
        p = lora.patches[module]
        assert p.param == "weight" and p.rank == 4 and p.alpha == 2.0
        assert p.down is down and p.up is up
    assert lora.report.targets == len(factors) and not lora.report.unmatched
    assert lora.report.naming == LAYOUTS[layout][3]


def test_underscored_names_resolve_against_module_names(state, keys):
    """`lora_unet_blocks_0_self_attn_q` -> blocks.0.self_attn.q (a naive replace would give
    blocks.0.self.attn.q); also the embeddings and head."""
    mods = ["blocks.0.self_attn.q", "blocks.1.ffn.2", "time_projection.1", "text_embedding.0",
            "time_embedding.2", "head.head"]
    f = lora_factors(state, mods, rank=2, seed=3)
    lora = _quiet_load(write_layout(f, "musubi"), keys)
    assert set(lora.patches) == set(mods)
    assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in write_layout(f, "musubi")


def test_diffusers_names_map_through_the_key_map(state, keys):
    f = lora_factors(state, ["blocks.1.self_attn.o", "blocks.0.ffn.0", "head.head",
                             "time_projection.1"], rank=2, seed=4)
    sd = write_layout(f, "diffusers")
    assert "transformer.blocks.1.attn1.to_out.0.lora_A.weight" in sd
    assert "transformer.proj_out.lora_B.weight" in sd
    assert set(_quiet_load(sd, keys).patches) == set(f)


def test_full_deltas_diff_diff_b_diff_m(keys):
    g = torch.Generator().manual_seed(0)
    d = TINY.dim
    sd = {
        "diffusion_model.head.head.diff": torch.randn(keys["head.head.weight"], generator=g),
        "diffusion_model.head.head.diff_b": torch.randn(keys["head.head.bias"], generator=g),
        "diffusion_model.blocks.0.norm3.diff": torch.randn(d, generator=g),
        "diffusion_model.blocks.0.norm3.diff_b": torch.randn(d, generator=g),
        "diffusion_model.blocks.1.diff_m": torch.randn(1, 6, d, generator=g),
        "diffusion_model.head.diff_m": torch.randn(1, 2, d, generator=g),
        "diffusion_model.blocks.0.self_attn.norm_q.diff": torch.randn(d, generator=g),
        "diffusion_model.blocks.0.modulation.diff": torch.randn(1, 6, d, generator=g),  # long form
    }
    lora = _quiet_load(sd, keys)
    p = lora.patches
    assert p["head.head"].diff is sd["diffusion_model.head.head.diff"] and p["head.head"].diff_b is not None
    assert p["blocks.0.norm3"].param == "weight" and p["blocks.0.norm3"].diff_b is not None
    assert p["head"].param == "modulation" and p["head"].target == "head.modulation"
    assert p["blocks.0"].target == "blocks.0.modulation" and p["blocks.1"].diff is not None
    assert p["blocks.0.self_attn.norm_q"].target == "blocks.0.self_attn.norm_q.weight"
    assert lora.report.layout == "comfy/non-diffusers"


def test_diff_m_and_modulation_diff_of_the_same_block_conflict(keys):
    sd = {"diffusion_model.blocks.1.diff_m": torch.zeros(1, 6, TINY.dim),
          "diffusion_model.blocks.1.modulation.diff": torch.zeros(1, 6, TINY.dim)}
    with pytest.raises(CheckpointError, match="blocks.1"):
        load_lora(sd, keys)


def test_no_match_names_the_file(tmp_path, keys):
    path = tmp_path / "sdxl_style.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2)},
              str(path))
    with pytest.raises(CheckpointError, match="sdxl_style.safetensors.*none of its 2 tensors"):
        load_lora(path, keys)


def test_partial_match_warns_once_with_counts_and_examples(factors, keys):
    sd = write_layout(factors, "comfy_down_up", alpha=4.0)
    sd["diffusion_model.blocks.7.self_attn.q.lora_down.weight"] = torch.zeros(4, TINY.dim)
    sd["diffusion_model.vace_blocks.0.proj.diff"] = torch.zeros(3)
    sd["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(4, TINY.dim)
    sd["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros(TINY.dim, 4)
    with pytest.warns(LoRAWarning) as rec:
        lora = load_lora(sd, keys, source="mixed.safetensors")
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "mixed.safetensors" in msg and "2 of" in msg and "blocks.7.self_attn.q" in msg
    assert "2 Wan2.1 image-conditioning tensors" in msg
    assert len(lora.report.unmatched) == 2 and len(lora.report.skipped_image) == 2
    assert len(lora.patches) == len(factors)


def test_any_float_dtype_and_fp32_delta(factors, keys):
    for dtype in (torch.bfloat16, torch.float16):
        sd = write_layout({m: (d.to(dtype), u.to(dtype)) for m, (d, u) in factors.items()},
                          "comfy_down_up", alpha=2.0)
        p = _quiet_load(sd, keys).patches["blocks.0.ffn.0"]
        want = (0.5 * (p.up.float() @ p.down.float()))
        assert p.delta().dtype == torch.float32 and torch.equal(p.delta(), want)


@pytest.mark.parametrize("extra, match", [
    ({"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(1, 96)}, "DoRA"),
    ({"lycoris_blocks_0_ffn_0.hada_w1_a": torch.ones(2, 2)}, "LoHa"),
])
def test_unsupported_adapters_are_refused(extra, match, factors, keys):
    sd = {**write_layout(factors, "comfy_down_up"), **extra}
    with pytest.raises(CheckpointError, match=match):
        load_lora(sd, keys)


def test_broken_pairs_and_shapes(factors, keys):
    sd = write_layout(factors, "comfy_AB")
    del sd["diffusion_model.blocks.0.self_attn.q.lora_B.weight"]
    with pytest.raises(CheckpointError, match="no matching up"):
        load_lora(sd, keys)
    sd = write_layout(factors, "comfy_AB")
    sd["diffusion_model.blocks.0.self_attn.q.lora_B.weight"] = torch.zeros(TINY.dim, 3)
    with pytest.raises(CheckpointError, match="rank"):
        load_lora(sd, keys)
    sd = write_layout(factors, "comfy_AB")
    sd["diffusion_model.blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(4, 2 * TINY.dim)
    with pytest.raises(CheckpointError, match="another model size"):
        load_lora(sd, keys)


def test_missing_file(tmp_path, keys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(tmp_path / "nope.safetensors", keys)


def test_describe_from_header(tmp_path, state, factors):
    sd = write_layout(factors, "comfy_down_up", alpha=8.0)
    sd.update(write_layout(lora_factors(state, ["head.head"], rank=2, seed=9), "comfy_down_up"))
    sd["diffusion_model.blocks.0.diff_m"] = torch.zeros(1, 6, TINY.dim)
    sd["diffusion_model.blocks.0.norm3.diff_b"] = torch.zeros(TINY.dim)
    path = tmp_path / "lightning_style.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(path))
    info = describe_lora(path)
    assert info["layout"] == "comfy/non-diffusers" and info["prefix"] == "diffusion_model."
    assert info["pair_keys"] == ["lora_down/lora_up"] and info["ranks"] == [2, 4]
    assert info["alphas"] == [8.0] and info["dtypes"] == ["BF16"]
    assert info["targets"] == len(factors) + 3
    assert info["kinds"] == {"cross_attn": 8, "ffn": 4, "head": 1, "modulation": 1, "norm": 1,
                             "self_attn": 8}
    assert info["extras"] == {"diff_b": 1, "diff_m": 1}
    musubi = describe_lora(write_layout(factors, "musubi"))
    assert musubi["layout"] == "musubi/kohya" and musubi["alphas"] is None


def test_corrupt_and_pickled_files(tmp_path, factors, keys):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_lora(bad, keys)
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        describe_lora(bad)
    pt = tmp_path / "old.pt"
    torch.save(write_layout(factors, "comfy_down_up", 4.0), str(pt))
    assert len(_quiet_load(pt, keys)) == len(factors)
    assert describe_lora(pt)["ranks"] == [4] and describe_lora(pt)["path"] == str(pt)


def test_bias_delta_shape_is_checked(keys):
    with pytest.raises(CheckpointError, match="bias delta"):
        load_lora({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.zeros(7)}, keys)


@pytest.mark.parametrize("layout", ["comfy_down_up", "musubi", "diffusers"])
def test_full_size_a14b_lightning_shaped_lora(layout, manifests_dir):
    """A rank-64 LoRA on every block linear of the real T2V-A14B layout (400 targets, the shape of
    the Lightning files), built on the meta device, resolves completely with shape checks; the
    Wan2.1 I2V image keys some lightx2v files carry are skipped with the note."""
    import json

    real = json.loads((manifests_dir / "official-wan22-t2v-a14b-dit.json").read_text())
    shapes = {t["name"]: tuple(t["shape"]) for t in real["tensors"]}
    factors = {}
    for m in block_modules(40):
        o, i = shapes[f"{m}.weight"]
        factors[m] = (torch.empty(64, i, device="meta"), torch.empty(o, 64, device="meta"))
    sd = write_layout(factors, layout, alpha=64.0)
    if layout == "comfy_down_up":
        sd["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.empty(64, 5120, device="meta")
        sd["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.empty(5120, 64, device="meta")
        with pytest.warns(LoRAWarning, match="2 Wan2.1 image-conditioning"):
            lora = load_lora(sd, shapes)
    else:
        lora = _quiet_load(sd, shapes)
    assert len(lora) == 400 and set(lora.patches) == set(factors)
    assert lora.patches["blocks.39.ffn.0"].weight_shape == (13824, 5120)
    assert lora.patches["blocks.10.self_attn.q"].scale == 1.0
