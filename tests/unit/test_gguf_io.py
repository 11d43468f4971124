"""GGUF reader/writer: shapes in torch order, dtypes, Q8_0 round trip, clear errors on bad files."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="GGUF reading/writing uses the gguf package")

from wanmoe.errors import CheckpointError  # noqa: E402
from wanmoe.loading.gguf import GGUFSource, open_gguf, write_gguf  # noqa: E402
from wanmoe.runtime.quant.gguf_dequant import GGUFWeight  # noqa: E402
from wanmoe.runtime.quant.quantize import quantize_q8_0  # noqa: E402


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "patch_embedding.weight": torch.randn(64, 4, 1, 2, 2, generator=g),  # 5-D, F32
        "blocks.0.modulation": torch.randn(1, 6, 64, generator=g),
        "blocks.0.self_attn.q.weight": torch.randn(64, 64, generator=g),
        "blocks.0.self_attn.q.bias": torch.randn(64, generator=g),
        "text_embedding.0.weight": torch.randn(64, 32, generator=g).bfloat16(),
        "time_embedding.0.weight": torch.randn(64, 32, generator=g).half(),
    }


def test_round_trip_shapes_dtypes_metadata(tmp_path):
    src = _tensors()
    w = src["blocks.0.self_attn.q.weight"]
    tensors = dict(src, **{"blocks.0.self_attn.q.weight": quantize_q8_0(w)})
    path = write_gguf(tmp_path / "m.gguf", tensors)
    s = open_gguf(path)
    assert isinstance(s, GGUFSource) and set(s.keys()) == set(src)
    assert s.metadata["general.architecture"] == "wan"
    assert s.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, t in src.items():
        assert s.shape(name) == tuple(t.shape), name
    assert s.dtype("blocks.0.self_attn.q.weight") == "Q8_0"
    assert s.dtype("text_embedding.0.weight") == torch.bfloat16
    assert s.dtype("time_embedding.0.weight") == torch.float16
    for name in ("patch_embedding.weight", "blocks.0.modulation", "text_embedding.0.weight",
                 "time_embedding.0.weight", "blocks.0.self_attn.q.bias"):
        got = s.get(name)
        assert got.dtype == src[name].dtype and torch.equal(got, src[name]), name
    assert s.get("text_embedding.0.weight", torch.float32).dtype == torch.float32


def test_q8_0_round_trip_matches_gguf_reference(tmp_path):
    w = torch.randn(96, 128)
    ref_bytes = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    path = write_gguf(tmp_path / "q.gguf", {"blocks.0.ffn.0.weight": quantize_q8_0(w)})
    # Read back independently with gguf's own reader: the stored blocks are ggml's.
    raw = gguf.GGUFReader(str(path)).tensors[0].data
    np.testing.assert_array_equal(np.asarray(raw), ref_bytes)
    got = open_gguf(path).get("blocks.0.ffn.0.weight")
    assert isinstance(got, GGUFWeight) and got.qtype == "Q8_0" and got.shape == (96, 128)
    ref = gguf.quants.dequantize(ref_bytes, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(got.dequantize().numpy(), ref)
    np.testing.assert_array_equal(open_gguf(path).get("blocks.0.ffn.0.weight", torch.float32).numpy(), ref)


def test_modulation_stored_2d_is_restored(tmp_path):
    # llama-quantize writes [1, 6, d] with the trailing unit dim dropped (ggml_n_dims).
    m = torch.randn(6, 64)
    path = write_gguf(tmp_path / "m.gguf", {"blocks.3.modulation": m})
    s = open_gguf(path)
    assert s.shape("blocks.3.modulation") == (1, 6, 64)
    assert torch.equal(s.get("blocks.3.modulation"), m[None])


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", {"a.weight": torch.randn(64, 64),
                                            "b.weight": quantize_q8_0(torch.randn(64, 64))})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"t\.gguf.*'b\.weight'.*truncated"):
        open_gguf(path)
    path.write_bytes(data[:40])  # cut inside the header
    with pytest.raises(CheckpointError, match=r"t\.gguf.*not a readable GGUF"):
        open_gguf(path)


def _write_with_gguf(path, tensors, arrays=None):
    """A file written by the gguf package's own writer: tensors [(name, array, raw_dtype)]."""
    w = gguf.GGUFWriter(str(path), "wan")
    for key, values in (arrays or {}).items():
        w.add_array(key, values)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_raw(path, name, qtype, shape, nbytes):
    _write_with_gguf(path, [(name, np.zeros((shape[0], nbytes // shape[0]), np.uint8), qtype)])


def test_unsupported_quant_type_is_named(tmp_path):
    path = tmp_path / "iq.gguf"
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_XS]
    _write_raw(path, "blocks.0.ffn.0.weight", gguf.GGMLQuantizationType.IQ4_XS, (4, 256), 4 * size)
    with pytest.raises(CheckpointError, match=r"iq\.gguf.*'blocks\.0\.ffn\.0\.weight'.*IQ4_XS"):
        open_gguf(path)


def test_unknown_type_id_is_named(tmp_path):
    path = tmp_path / "unk.gguf"
    _write_raw(path, "x.weight", gguf.GGMLQuantizationType.Q8_0, (2, 32), 2 * 34)
    data = bytearray(path.read_bytes())
    # The tensor-info record ends with: type id (uint32 = 8 for Q8_0), data offset (uint64 = 0).
    at = data.index(b"x.weight") + len(b"x.weight") + 4 + 2 * 8
    assert data[at:at + 4] == (8).to_bytes(4, "little")
    data[at:at + 4] = (250).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"unk\.gguf.*'x\.weight'.*unknown type id 250"):
        open_gguf(path)


def test_missing_file_and_key(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_gguf(tmp_path / "nope.gguf")
    path = write_gguf(tmp_path / "k.gguf", {"a": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="'b' is not in"):
        open_gguf(path).get("b")


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "bad.gguf"
    with pytest.raises(TypeError, match="int64"):
        write_gguf(path, {"a": torch.zeros(4), "b": torch.zeros(4, dtype=torch.int64)})
    assert list(tmp_path.iterdir()) == []


def test_gguf_orig_shape_metadata(tmp_path):
    # ComfyUI-GGUF records shapes ggml cannot hold under comfy.gguf.orig_shape.<name>.
    flat = torch.arange(128.0).numpy().reshape(8, 16)
    _write_with_gguf(tmp_path / "o.gguf", [("patch_embedding.weight", flat, None)],
                     {"comfy.gguf.orig_shape.patch_embedding.weight": [8, 4, 1, 2, 2]})
    src = open_gguf(tmp_path / "o.gguf")
    assert src.shape("patch_embedding.weight") == (8, 4, 1, 2, 2)
    assert torch.equal(src.get("patch_embedding.weight"), torch.arange(128.0).reshape(8, 4, 1, 2, 2))
