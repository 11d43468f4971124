"""`wanmoe generate --text-encoder FILE.gguf` and `--text-weights` on the tiny official A14B folder."""

import pytest
import torch
from safetensors.torch import load_file

from wanmoe import cli

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

from wanmoe.loading.keymaps.t5 import official_to_hf  # noqa: E402

ARGS = ["--size", "64*64", "--frames", "5", "--steps", "2", "--seed", "4", "--device", "cpu", "--quiet"]


def _t5_to_gguf(pth, out, qtype: str):
    """The tiny umT5 .pth as a llama.cpp-style GGUF (gguf-py's T5ENCODER names and writer)."""
    state = torch.load(pth, map_location="cpu", weights_only=True)
    layers = 1 + max(int(n.split(".")[1]) for n in state if n.startswith("blocks."))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, layers)
    writer = gguf.GGUFWriter(str(out), "t5encoder")
    writer.add_block_count(layers)
    for name, t in state.items():
        g = name_map.get_name(official_to_hf(name), try_suffixes=(".weight",))
        values = t.float().numpy()
        if qtype == "F32" or values.ndim == 1 or "attn_rel_b" in g:
            writer.add_tensor(g, values)
        else:
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(g, quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _latents(a14b_dir, tmp_path, name, *extra):
    lat = tmp_path / f"{name}.safetensors"
    assert cli.main(["generate", "a red ball", "--ckpt-dir", str(a14b_dir), *ARGS,
                     "--out", str(tmp_path / f"{name}.mp4"), "--save-latents", str(lat), *extra]) == 0
    return load_file(str(lat))["latents"]


@pytest.fixture(scope="module")
def ref_latents(a14b_dir, tmp_path_factory):
    return _latents(a14b_dir, tmp_path_factory.mktemp("ref"), "ref")


def test_f32_gguf_encoder_gives_the_same_video(a14b_dir, tmp_path, ref_latents, capsys):
    # the .pth holds bf16 values; an F32 GGUF of them loads the same fp32 encoder: bit-identical
    path = _t5_to_gguf(a14b_dir / "models_t5_umt5-xxl-enc-bf16.pth", tmp_path / "umt5-F32.gguf", "F32")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "text_encoder" in out and "llama.cpp T5 GGUF" in out
    assert torch.equal(_latents(a14b_dir, tmp_path, "f32", "--text-encoder", str(path)), ref_latents)


def test_q8_0_gguf_encoder_and_text_weights_int8_run_close_to_float(a14b_dir, tmp_path, ref_latents):
    path = _t5_to_gguf(a14b_dir / "models_t5_umt5-xxl-enc-bf16.pth", tmp_path / "umt5-Q8_0.gguf", "Q8_0")
    q8 = _latents(a14b_dir, tmp_path, "q8", "--text-encoder", str(path))
    int8 = _latents(a14b_dir, tmp_path, "int8", "--text-weights", "int8")
    for got in (q8, int8):
        rel = ((got - ref_latents).norm() / ref_latents.norm()).item()
        print(f"latents vs the bf16 .pth encoder: {rel:.2e}")
        assert 0 < rel < 0.05, rel  # 8-bit encoder weights through 2 denoising steps


def test_text_weights_is_validated_before_any_weight_loads(a14b_dir, tmp_path, no_weight_reads, capsys):
    with pytest.raises(SystemExit):  # argparse refuses the value
        cli.main(["generate", "x", "--ckpt-dir", str(a14b_dir), *ARGS, "--text-weights", "int4"])
    assert "--text-weights" in capsys.readouterr().err


def test_python_api_text_weights_and_gguf_encoder(a14b_dir, tmp_path):
    from wanmoe.pipeline import load_pipeline
    from wanmoe.runtime.quant.linear import FP8Linear, GGUFLinear

    pipe = load_pipeline(a14b_dir, device="cpu", text_weights="fp8")
    assert sum(isinstance(m, FP8Linear) for m in pipe.text_encoder.model.modules()) == 7 * 2
    path = _t5_to_gguf(a14b_dir / "models_t5_umt5-xxl-enc-bf16.pth", tmp_path / "q8.gguf", "Q8_0")
    pipe = load_pipeline(a14b_dir, device="cpu", text_encoder=path)
    assert sum(isinstance(m, GGUFLinear) for m in pipe.text_encoder.model.modules()) == 7 * 2
    assert not any(isinstance(m, GGUFLinear) for e in pipe.experts.values() for m in e.modules())
