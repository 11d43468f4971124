"""`wanmoe convert`: bf16 / fp8 / GGUF Q8_0 files load back to exactly the expected tensors."""

import numpy as np
import pytest
import torch
from helpers_quant import CFG, tiny_state
from safetensors.torch import save_file

gguf = pytest.importorskip("gguf", reason="GGUF output and its reference quantiser")

from wanmoe.convert import convert, convert_expert  # noqa: E402
from wanmoe.errors import InputError  # noqa: E402
from wanmoe.loading.gguf import open_gguf  # noqa: E402
from wanmoe.loading.containers import open_tensors  # noqa: E402
from wanmoe.models.dit import WanDiT  # noqa: E402
from wanmoe.runtime.quant.gguf_dequant import GGUFWeight  # noqa: E402
from wanmoe.runtime.quant.quantize import quantize_fp8  # noqa: E402

BLOCK_LINEAR = ("self_attn.q", "cross_attn.v", "ffn.0", "ffn.2")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    sd = tiny_state()
    save_file(sd, str(d / "expert.safetensors"))
    return d / "expert.safetensors", sd


def test_bf16_is_storage_dtype_cast(src, tmp_path):
    path, sd = src
    out = convert_expert(path, tmp_path / "e.safetensors", "bf16")
    got = open_tensors(out)
    assert set(got.keys()) == set(sd)
    for name, t in sd.items():
        want = t.to(WanDiT.storage_dtype(name, torch.bfloat16))
        assert got.dtype(name) == want.dtype and torch.equal(got.get(name), want), name
    assert got.dtype("blocks.0.ffn.0.weight") == torch.bfloat16
    assert got.dtype("time_projection.1.weight") == torch.float32  # fp32 region kept


def test_fp8_layout(src, tmp_path):
    path, sd = src
    out = convert_expert(path, tmp_path / "e.safetensors", "fp8")
    got = open_tensors(out)
    assert got.metadata["wanmoe.quant"] == "fp8_e4m3fn/per-channel"
    for blk in range(CFG.num_layers):
        for lin in BLOCK_LINEAR:
            name = f"blocks.{blk}.{lin}.weight"
            q, scale = quantize_fp8(sd[name])
            assert got.dtype(name) == torch.float8_e4m3fn
            assert torch.equal(got.get(name).view(torch.uint8), q.view(torch.uint8))
            assert torch.equal(got.get(name + "_scale"), scale)
    assert len(got.keys()) == len(sd) + 10 * CFG.num_layers  # one scale per block linear
    assert torch.equal(got.get("head.modulation"), sd["head.modulation"])


def test_gguf_q8_0_layout(src, tmp_path):
    path, sd = src
    out = convert_expert(path, tmp_path / "e.gguf", "gguf-q8_0")
    g = open_gguf(out)
    assert g.metadata["general.architecture"] == "wan"
    assert g.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert set(g.keys()) == set(sd)
    for name, t in sd.items():
        assert g.shape(name) == tuple(t.shape), name
        got = g.get(name)
        if isinstance(got, GGUFWeight):  # blocks identical to ggml's reference quantiser
            ref = gguf.quants.quantize(t.numpy(), gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(got.data.numpy().reshape(ref.shape), ref)
        elif g.dtype(name) == torch.float32:
            assert torch.equal(got, t), name
        else:
            assert g.dtype(name) == torch.float16 and torch.equal(got, t.half()), name
    assert sum(isinstance(g.get(n), GGUFWeight) for n in g.keys()) == 10 * CFG.num_layers
    assert g.dtype("patch_embedding.weight") == torch.float32 and g.shape("patch_embedding.weight")[2:] == (1, 2, 2)
    assert g.dtype("blocks.1.modulation") == torch.float32
    assert g.dtype("text_embedding.2.weight") == torch.float16  # non-block: kept, F16


def test_from_diffusers_layout_and_folder(src, tmp_path):
    from wanmoe.loading.keymaps.dit import official_to_diffusers

    _, sd = src
    root = tmp_path / "ckpt"
    for expert in ("high_noise_model", "low_noise_model"):
        (root / expert).mkdir(parents=True)
        save_file({official_to_diffusers(k): v for k, v in sd.items()},
                  str(root / expert / "diffusion_pytorch_model.safetensors"))
    written = convert(root, "bf16")
    assert [p.name for p in written] == ["high_noise.safetensors", "low_noise.safetensors"]
    assert written[0].parent == tmp_path / "ckpt-bf16"
    got = open_tensors(written[1])
    assert torch.equal(got.get("blocks.1.norm3.weight"), sd["blocks.1.norm3.weight"])


def test_cli_and_refusals(src, tmp_path):
    from wanmoe.cli import main

    path, _ = src
    out = tmp_path / "x.gguf"
    assert main(["convert", str(path), "--to", "gguf-q8_0", "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "x.gguf.partial").exists()
    with pytest.raises(InputError, match="already exists"):
        convert(path, "gguf-q8_0", out)
    with pytest.raises(InputError, match=r"must end in \.safetensors"):
        convert(path, "fp8", tmp_path / "y.gguf")
    assert main(["convert", str(path), "--to", "fp8", "--out", str(tmp_path / "y.gguf")]) == 2


def test_failure_leaves_no_file(src, tmp_path, monkeypatch):
    import wanmoe.runtime.quant.quantize as qz

    path, _ = src

    def boom(_w):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qz, "quantize_q8_0", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_expert(path, tmp_path / "z.gguf", "gguf-q8_0")
    assert list(tmp_path.iterdir()) == []


def test_folder_conversion_is_all_or_nothing(src, tmp_path, monkeypatch):
    import wanmoe.runtime.quant.quantize as qz

    _, sd = src
    root = tmp_path / "ckpt"
    for expert in ("high_noise_model", "low_noise_model"):
        (root / expert).mkdir(parents=True)
        save_file(sd, str(root / expert / "diffusion_pytorch_model.safetensors"))
    calls, real = [], qz.quantize_q8_0

    def fail_in_second_expert(w):
        calls.append(1)
        if len(calls) > 10 * CFG.num_layers:  # the first expert's block linears succeed
            raise RuntimeError("disk full")
        return real(w)

    monkeypatch.setattr(qz, "quantize_q8_0", fail_in_second_expert)
    out = tmp_path / "new" / "q8"
    with pytest.raises(RuntimeError, match="disk full"):
        convert(root, "gguf-q8_0", out)
    assert len(calls) > 10 * CFG.num_layers and not (tmp_path / "new").exists()  # nothing half-written
    (tmp_path / "a.gguf").touch()
    with pytest.raises(InputError, match=r"a\.gguf is a file, but .* has 2 experts"):
        convert(root, "gguf-q8_0", tmp_path / "a.gguf")
