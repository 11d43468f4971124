"""Detection on tiny files and folders written by the test, in every supported layout."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanmoe.loading import detect as D
from wanmoe.loading import inspect as insp
from wanmoe.loading.sources import SafetensorsFile
from wanmoe.testing.small import (LINEAR, TINY_DIT, TINY_VAE21, TINY_VAE22, comfy_quant_state, diffusers_transformer,
                                  diffusers_vae, dit_config_json, dit_state, fp8_scaled_state, hf_umt5, t5_state,
                                  vae_state, write_diffusers, write_gguf_dit, write_official_a14b, write_official_ti2v,
                                  write_sharded, write_wanmoe)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """label -> path of one tiny checkpoint file/folder per layout."""
    d = tmp_path_factory.mktemp("layouts")
    sd = dit_state()
    out = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        save_file({k: v.to(dt) for k, v in sd.items()}, d / f"dit_{dt}.safetensors")
        out[f"official-{dt}"] = d / f"dit_{dt}.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, d / "prefixed.safetensors")
    save_file({k: v.to(torch.float8_e4m3fn) if LINEAR.match(k) else v for k, v in sd.items()}, d / "fp8.safetensors")
    save_file(fp8_scaled_state(sd), d / "fp8_scaled.safetensors")
    save_file(comfy_quant_state(sd), d / "comfy_quant.safetensors")
    diffusers_transformer().save_pretrained(d / "transformer")
    out.update(prefixed=d / "prefixed.safetensors", fp8=d / "fp8.safetensors", fp8_scaled=d / "fp8_scaled.safetensors",
               comfy_quant=d / "comfy_quant.safetensors", diffusers=d / "transformer",
               gguf=write_gguf_dit(d / "dit.gguf"))
    write_sharded(d / "sharded", sd, dit_config_json(TINY_DIT))
    out["sharded"] = d / "sharded"
    for cfg in (TINY_VAE21, TINY_VAE22):
        torch.save(vae_state(cfg), d / f"vae{cfg.version}.pth")
        diffusers_vae(cfg).save_pretrained(d / f"vae{cfg.version}")
        out[f"vae{cfg.version}"], out[f"vae{cfg.version}-diffusers"] = d / f"vae{cfg.version}.pth", d / f"vae{cfg.version}"
    torch.save(t5_state(), d / "t5.pth")
    hf_umt5().save_pretrained(d / "text_encoder")
    out.update(t5=d / "t5.pth", t5_hf=d / "text_encoder")
    return out


EXPECT = {
    "official-torch.float32": ("single-file-official", "dit"), "prefixed": ("single-file-comfy-prefixed", "dit"),
    "fp8": ("fp8-cast", "dit"), "fp8_scaled": ("comfy-fp8-scaled", "dit"), "comfy_quant": ("comfy-quant", "dit"),
    "diffusers": ("diffusers", "dit"), "gguf": ("gguf", "dit"), "sharded": ("official-sharded", "dit"),
    "vae2.1": ("single-file-official", "vae"), "vae2.1-diffusers": ("diffusers", "vae"),
    "vae2.2": ("single-file-official", "vae"), "vae2.2-diffusers": ("diffusers", "vae"),
    "t5": ("single-file-official", "text_encoder"), "t5_hf": ("hf-transformers", "text_encoder"),
}


@pytest.mark.parametrize("label", sorted(EXPECT))
def test_file_layouts(files, label):
    det = insp.detect(files[label])
    assert (det.format, det.component) == EXPECT[label]
    if det.component == "dit":
        dims = {k: det.dims[k] for k in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim")}
        assert dims == {k: getattr(TINY_DIT, k) for k in dims}
    if label.startswith("vae"):
        cfg = TINY_VAE22 if "2.2" in label else TINY_VAE21
        assert (det.dims["version"], det.dims["z_dim"], det.dims["dim"]) == (cfg.version, cfg.z_dim, cfg.dim)
        assert det.model == (D.MODEL_VAE22 if "2.2" in label else D.MODEL_VAE21)


def test_heads_from_config_json_else_flagged(files):
    assert insp.detect(files["sharded"]).dims["num_heads"] == TINY_DIT.num_heads  # config.json
    assert insp.detect(files["diffusers"]).dims["num_heads"] == TINY_DIT.num_heads  # diffusers config.json
    single = insp.detect(files["official-torch.float32"])
    assert single.dims["num_heads"] is None and any("num_heads unknown" in n for n in single.notes)


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
def test_dtype_histogram_matches_file(files, dt):
    det = insp.detect(files[f"official-torch.{dt}"])
    sd = dit_state()
    n = sum(t.numel() for t in sd.values())
    assert det.dtypes == {dt: {"count": len(sd), "bytes": n * getattr(torch, dt).itemsize}}


def test_quant_histograms(files):
    linears = {k: t for k, t in dit_state().items() if LINEAR.match(k)}
    n_lin = len(linears)
    assert insp.detect(files["fp8_scaled"]).dtypes["float8_e4m3fn"]["count"] == n_lin + 1  # + scaled_fp8 marker
    assert insp.detect(files["comfy_quant"]).dtypes["uint8"]["count"] == n_lin  # the comfy_quant JSON tensors
    g = insp.detect(files["gguf"])
    assert g.dtypes["Q8_0"]["count"] == n_lin
    q8 = sum(t.numel() for t in linears.values())
    assert g.dtypes["Q8_0"]["bytes"] == q8 // 32 * 34  # Q8_0 block: fp16 scale + 32 int8


def test_no_two_file_layouts_alike(files):
    keys = {label: insp.detect(files[label]).key for label in EXPECT}
    assert len(set(keys.values())) == len(keys), keys


def test_detection_reads_headers_only(files, monkeypatch):
    def boom(self, name, dtype=None):
        raise AssertionError(f"detection read tensor data ({name})")

    monkeypatch.setattr(SafetensorsFile, "get", boom)
    for label in ("official-torch.float32", "fp8_scaled", "sharded", "diffusers", "t5_hf"):
        insp.detect(files[label])


@pytest.mark.parametrize("writer,fmt,experts", [
    (write_official_a14b, "official-dir-a14b", ["high_noise", "low_noise"]),
    (write_official_ti2v, "official-dir-ti2v5b", ["dense"]),
    (write_diffusers, "diffusers-dir", ["high_noise", "low_noise"]),
    (write_wanmoe, "wanmoe-dir", ["high_noise", "low_noise"])])
def test_folder_layouts(tmp_path, writer, fmt, experts):
    det = insp.detect(writer(tmp_path / "ckpt"))
    assert (det.format, det.component) == (fmt, "pipeline")
    assert sorted(det.parts) == sorted([*experts, "text_encoder", "vae"])
    assert {det.parts[e].component for e in experts} == {"dit"}
    assert det.dims["dim"] == TINY_DIT.dim and det.dims["num_heads"] == TINY_DIT.num_heads
    assert det.total_bytes == sum(p.total_bytes for p in det.parts.values())


@pytest.mark.parametrize("a,b,high", [
    ("Wan2.2/high_noise_model", "Wan2.2/low_noise_model", "a"),
    ("x/wan2.2_t2v_low_noise_14B_fp16.safetensors", "x/wan2.2_t2v_high_noise_14B_fp16.safetensors", "b"),
    ("q/HighNoise/Wan2.2-T2V-A14B-Q4_K_M.gguf", "q/LowNoise/Wan2.2-T2V-A14B-Q4_K_M.gguf", "a"),
    ("k/Wan2_2-T2V-A14B_HIGH_fp8_e4m3fn_scaled_KJ.safetensors", "k/Wan2_2-T2V-A14B-LOW_fp8.safetensors", "a"),
])
def test_expert_roles_from_paths(a, b, high):
    r = D.expert_roles(a, b)
    assert str(r.high) == (a if high == "a" else b) and str(r.low) == (b if high == "a" else a)


def test_expert_roles_unknown():
    r = D.expert_roles("m/expert_a.safetensors", "m/expert_b.safetensors")
    assert r.high is None and r.low is None and "cannot be told from the weights" in r.note
    assert D.expert_roles("m/high.safetensors", "n/high.safetensors").high is None  # both say high
