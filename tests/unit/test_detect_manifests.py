"""Format detection at full size from the real-checkpoint manifests (shape-only, no allocation).

Expected dims come from wanmoe.configs presets (spec §1.1) and expected byte totals from the
manifests' own summaries; every ComfyUI/GGUF variant is derived from the official manifest by
the layout rules of formats.md §3-§4.
"""

from __future__ import annotations

import json
import re

import pytest

from wanmoe.configs import A14B_DIT, TI2V_5B_DIT, UMT5_XXL
from wanmoe.loading import detect as D
from wanmoe.testing.small import LINEAR


def _load(manifests_dir, name):
    return json.loads((manifests_dir / name).read_text())


def _entries(m, dtype=None, name_key="name"):
    return {t[name_key]: (tuple(t["shape"]), dtype or t["dtype"]) for t in m["tensors"]}


@pytest.fixture(scope="module")
def a14b(manifests_dir):
    return _load(manifests_dir, "official-wan22-t2v-a14b-dit.json")


def fp8_cast(entries):
    return {n: (s, "float8_e4m3fn" if LINEAR.match(n) else d) for n, (s, d) in entries.items()}


def fp8_scaled(entries):
    out = fp8_cast(entries)
    out.update({n.removesuffix("weight") + "scale_weight": ((), "float32") for n in entries if LINEAR.match(n)})
    out["scaled_fp8"] = ((0,), "float8_e4m3fn")
    return out


def comfy_quant(entries, per_layer=True):
    out = fp8_cast(entries)
    for n in entries:
        if LINEAR.match(n):
            base = n.removesuffix(".weight")
            out[base + ".weight_scale"] = ((), "float32")
            if per_layer:
                out[base + ".comfy_quant"] = ((30,), "uint8")
    return out


def gguf_q4km(entries):
    """Q4_K_M mix of formats.md §4: v/ffn.2 Q6_K, other block linears Q4_K, the rest F32."""
    out = {}
    for n, (s, _) in entries.items():
        if LINEAR.match(n):
            q = "Q6_K" if re.search(r"\.v\.weight$|ffn\.2\.weight$", n) else "Q4_K"
            out[n] = (s, q)
        else:
            out[n] = (s, "float32")
    return out


def layouts(manifests_dir, a14b):
    """(label, Detection) for every layout, at full size."""
    off = _entries(a14b)
    ti2v = _entries(_load(manifests_dir, "official-wan22-ti2v-5b-dit.json"))
    mp = _load(manifests_dir, "map-official-to-diffusers-wan22-t2v-a14b-transformer.json")
    qmeta = {"_quantization_metadata": json.dumps({"layers": {n[:-7]: {"format": "float8_e4m3fn"}
                                                              for n in off if LINEAR.match(n)}})}
    out = [
        ("official", D.detect_tensors(off)),
        ("prefixed", D.detect_tensors({"model.diffusion_model." + n: v for n, v in off.items()})),
        ("fp8-cast", D.detect_tensors(fp8_cast(off))),
        ("fp8-scaled", D.detect_tensors(fp8_scaled(off))),
        ("comfy-quant", D.detect_tensors(comfy_quant(off))),
        ("diffusers", D.detect_tensors(_entries(mp, name_key="diffusers_name"))),
        ("gguf", D.detect_tensors(gguf_q4km(off), container="gguf")),
        ("ti2v", D.detect_tensors(ti2v)),
        ("ti2v-sharded", D.detect_tensors(ti2v, container="sharded")),
    ]
    for f in ("official-wan21-vae", "official-wan22-vae", "diffusers-wan21-vae", "diffusers-wan22-vae",
              "official-umt5-xxl-encoder", "transformers-umt5-xxl-encoder"):
        out.append((f, D.detect_tensors(_entries(_load(manifests_dir, f + ".json")))))
    return out


def _dit_dims(cfg):
    return {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim,
            "out_dim": cfg.out_dim, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
            "patch_size": list(cfg.patch_size), "num_heads": cfg.num_heads}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "model."])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a14b_expert_official_names(a14b, prefix, dtype):
    det = D.detect_tensors({prefix + n: v for n, v in _entries(a14b, dtype).items()})
    assert det.component == "dit" and det.model == D.MODEL_A14B
    assert det.format == ("single-file-comfy-prefixed" if prefix else "single-file-official")
    assert det.prefix == prefix
    assert det.dims == _dit_dims(A14B_DIT)
    assert det.dit_config() == A14B_DIT
    n = a14b["summary"]["num_params"]
    assert det.dtypes == {dtype: {"count": 1095, "bytes": n * (4 if dtype == "float32" else 2)}}
    assert any("cannot be read from DiT shapes" in x for x in det.notes)


def test_a14b_quant_variants(a14b):
    off = _entries(a14b)
    n_lin = sum(1 for n in off if LINEAR.match(n))
    assert n_lin == 40 * 10
    cast = D.detect_tensors(fp8_cast(off))
    assert cast.format == "fp8-cast" and cast.dtypes["float8_e4m3fn"]["count"] == n_lin
    scaled = D.detect_tensors(fp8_scaled(off))
    assert (scaled.format, scaled.model, scaled.dims) == ("comfy-fp8-scaled", D.MODEL_A14B, _dit_dims(A14B_DIT))
    for per_layer in (True, False):
        meta = None if per_layer else {"_quantization_metadata": "{}"}
        cq = D.detect_tensors(comfy_quant(off, per_layer), meta)
        assert (cq.format, cq.model) == ("comfy-quant", D.MODEL_A14B)
    g = D.detect_tensors(gguf_q4km(off), container="gguf")
    assert g.format == "gguf" and g.dims == _dit_dims(A14B_DIT)
    assert (g.dtypes["Q4_K"]["count"], g.dtypes["Q6_K"]["count"]) == (280, 120)  # formats.md §4
    # Q4_K: 144 bytes per 256 weights (ggml block layout)
    q4 = sum(s[0] * s[1] for n, (s, q) in gguf_q4km(off).items() if q == "Q4_K")
    assert g.dtypes["Q4_K"]["bytes"] == q4 // 256 * 144


def test_diffusers_transformer_names(manifests_dir):
    m = _load(manifests_dir, "diffusers-wan22-t2v-a14b-transformer.json")
    det = D.detect_tensors(_entries(m), config=m["config"])
    assert (det.format, det.component, det.model, det.naming) == ("diffusers", "dit", D.MODEL_A14B, "diffusers")
    assert det.dit_config() == A14B_DIT
    assert "num_heads from config.json" in det.notes
    assert det.total_bytes == m["summary"]["bytes_at_listed_dtypes"]


def test_ti2v_5b(manifests_dir):
    m = _load(manifests_dir, "official-wan22-ti2v-5b-dit.json")
    det = D.detect_tensors(_entries(m), config=m["config"]["config_json_fields_registered"])
    assert (det.component, det.model) == ("dit", D.MODEL_5B)
    assert det.dit_config() == TI2V_5B_DIT
    assert det.total_bytes == m["summary"]["bytes_at_listed_dtypes"]


@pytest.mark.parametrize("name,naming,version,z", [
    ("official-wan21-vae", "official", "2.1", 16), ("diffusers-wan21-vae", "diffusers", "2.1", 16),
    ("official-wan22-vae", "official", "2.2", 48), ("diffusers-wan22-vae", "diffusers", "2.2", 48)])
def test_vaes(manifests_dir, name, naming, version, z):
    m = _load(manifests_dir, name + ".json")
    det = D.detect_tensors(_entries(m))
    assert (det.component, det.naming, det.dims["version"], det.dims["z_dim"]) == ("vae", naming, version, z)
    assert det.model == (D.MODEL_VAE22 if version == "2.2" else D.MODEL_VAE21)
    cfg = m["config"]
    assert det.dims["dim"] == cfg.get("dim", cfg.get("base_dim"))
    assert det.total_bytes == m["summary"]["bytes_at_listed_dtypes"]


@pytest.mark.parametrize("name,naming", [("official-umt5-xxl-encoder", "official"),
                                         ("transformers-umt5-xxl-encoder", "hf")])
def test_umt5(manifests_dir, name, naming):
    det = D.detect_tensors(_entries(_load(manifests_dir, name + ".json")))
    assert (det.component, det.model, det.naming) == ("text_encoder", D.MODEL_UMT5, naming)
    assert det.t5_config() == UMT5_XXL


def test_no_two_layouts_detected_the_same(manifests_dir, a14b):
    found = layouts(manifests_dir, a14b)
    keys = [d.key for _, d in found]
    assert all(d.component != "unknown" for _, d in found)
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, [(lbl, d.key) for lbl, d in found if d.key in dupes]


def test_unknown_tensors_are_reported():
    det = D.detect_tensors({"foo.weight": ((3, 3), "float32")})
    assert det.component == "unknown" and "foo.weight" in det.notes[-1]
