"""Header checks that the fuzz tests rely on: dtype tables agree, GGUF walk bounds, JSON types."""

import struct

import pytest

from wanmoe.errors import CheckpointError
from wanmoe.loading.gguf_walk import walk
from wanmoe.loading.json_files import check_dit_config, read_object
from wanmoe.loading.safetensors_header import ST_ITEMSIZE
from wanmoe.loading.sources import ST_DTYPES


def test_safetensors_itemsizes_match_torch():
    assert set(ST_ITEMSIZE) == set(ST_DTYPES)
    for code, dt in ST_DTYPES.items():
        assert ST_ITEMSIZE[code] == dt.itemsize, code


def _gguf(kv: bytes, n_kv: int, n_tensors: int = 0, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tail


def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


F32 = {0: ("F32", 1, 4)}


def test_gguf_walk_reads_values_and_tensor_ranges(tmp_path):
    kv = _s(b"a.u32") + struct.pack("<II", 4, 7) + _s(b"a.arr") + struct.pack("<IIQ", 9, 5, 2)
    kv += struct.pack("<ii", -1, 2) + _s(b"a.str") + struct.pack("<I", 8) + _s(b"hi")
    info = _s(b"w") + struct.pack("<IQQIQ", 2, 2, 3, 0, 0)
    head = _gguf(kv, 3, 1, info)
    data = head + bytes(-len(head) % 32) + bytes(24)
    (tmp_path / "t.gguf").write_bytes(data)
    h = walk(tmp_path / "t.gguf", F32)
    assert h.metadata == {"a.u32": 7, "a.arr": [-1, 2], "a.str": "hi"}
    (t,) = h.tensors
    assert (t.name, t.dims, t.nbytes, t.start) == ("w", (2, 3), 24, h.data_offset)
    (tmp_path / "cut.gguf").write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="'w' ends at byte .* truncated"):
        walk(tmp_path / "cut.gguf", F32)


@pytest.mark.parametrize("body,message", [
    (_gguf(_s(b"k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 2**40), 1), "array 'k'"),
    (_gguf(_s(b"k") + struct.pack("<I", 13), 1), "unknown value type 13"),
    (_gguf(b"", 0, 1, _s(b"w") + struct.pack("<I", 9)), "9 dims"),
    (_gguf(b"", 0, 1, _s(b"w") + struct.pack("<IQQIQ", 2, 2**33, 2**33, 0, 0)), "needs"),
    (_gguf(b"", 0, 1, _s(b"w") + struct.pack("<IQIQ", 1, 4, 77, 0)), "type"),
    (_gguf(_s(b"general.alignment") + struct.pack("<II", 4, 3), 1), "power of two"),
])
def test_gguf_walk_refuses(tmp_path, body, message):
    (tmp_path / "b.gguf").write_bytes(body + bytes(64))
    with pytest.raises(CheckpointError, match=message):
        walk(tmp_path / "b.gguf", F32)


def test_json_objects_and_dit_config(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("[1]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        read_object(p)
    p.write_text("[" * 100000)
    with pytest.raises(CheckpointError, match="c.json"):
        read_object(p)
    check_dit_config(p, {"dim": 256, "num_heads": 2, "patch_size": [1, 2, 2], "eps": 1e-6})
    with pytest.raises(CheckpointError, match="head dim 5"):
        check_dit_config(p, {"dim": 10, "num_heads": 2})
    with pytest.raises(CheckpointError, match="'patch_size'"):
        check_dit_config(p, {"patch_size": [1, 2]})
