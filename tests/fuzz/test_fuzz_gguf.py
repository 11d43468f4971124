"""Fuzz the GGUF reader: a mutated file loads tensors that fit inside it, or is refused with a
WanmoeError; never another exception, a hang or an allocation beyond the file."""

import math
import struct

import pytest
import torch
from fuzzlib import COUNTS, byte_mutation, fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf", reason="GGUF reading uses the gguf package")

from wanmoe.loading.gguf import GGUFSource, write_gguf  # noqa: E402
from wanmoe.runtime.quant.gguf_dequant import GGUFWeight  # noqa: E402
from wanmoe.runtime.quant.quantize import quantize_q8_0  # noqa: E402

N_BYTES, N_FIELDS = 450, 250


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.modulation": torch.randn(1, 6, 8, generator=g),
               "head.weight": torch.randn(4, 8, generator=g).half(),
               "text.weight": torch.randn(2, 4, generator=g).bfloat16(),
               "ffn.weight": quantize_q8_0(torch.randn(2, 32, generator=g))}
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf", tensors,
                      metadata={"wanmoe.note": "fuzz", "wanmoe.count": 7})
    return path.read_bytes()


def _header_len(data: bytes) -> int:
    return data.index(b"ffn.weight", data.index(b"ffn.weight") + 1) + 40 if data.count(b"ffn.weight") > 1 \
        else min(len(data), 600)


def _load(path):
    with GGUFSource(path) as src:
        out = {}
        for k in src.keys():
            t = src.get(k)
            shape = src.shape(k)
            if isinstance(t, GGUFWeight):
                assert tuple(t.shape) == tuple(shape)
                dense = src.get(k, torch.float32)
                assert tuple(dense.shape) == tuple(shape)
            else:
                assert tuple(t.shape) == tuple(shape)
            out[k] = (shape, src.nbytes(k))
        return out


def _case(fuzz_dir, data: bytes):
    path = fuzz_dir / "m.gguf"
    path.write_bytes(data)
    result = run_case("gguf", path, _load)
    if result is not None:
        assert sum(nb for _, nb in result.values()) <= len(data)
        for shape, nb in result.values():
            assert math.prod(shape) >= 0 and nb <= len(data)


def test_unmutated_file_loads(fuzz_dir, base):
    _case(fuzz_dir, base)
    out = _load(fuzz_dir / "m.gguf")
    assert out["blocks.0.modulation"][0] == (1, 6, 8)


def test_fuzz_gguf_bytes(fuzz_dir, base):
    start = COUNTS.get("gguf", 0)

    @fuzz_settings(N_BYTES)
    @given(data=byte_mutation(base, hot=_header_len(base)))
    def run(data):
        _case(fuzz_dir, data)

    run()
    assert COUNTS["gguf"] - start >= N_BYTES * 0.9


def _fields(data: bytes) -> list[int]:
    """Byte offsets of the u32/u64 fields of the header worth aiming at: counts and lengths."""
    return [4, 8, 16] + [i - 8 for i in range(24, min(len(data), 700))
                         if data[i - 8:i] in {struct.pack("<Q", n) for n in range(1, 64)}]


def test_fuzz_gguf_counts(fuzz_dir, base):
    """Aimed at the counts, lengths and dims: the values that size allocations."""
    start = COUNTS.get("gguf", 0)
    fields = _fields(base)
    big = [0, 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63, 2**64 - 1, len(base), len(base) * 8]

    @fuzz_settings(N_FIELDS)
    @given(edits=st.lists(st.tuples(st.sampled_from(fields), st.sampled_from(big),
                                    st.sampled_from([4, 8])), min_size=1, max_size=3))
    def run(edits):
        buf = bytearray(base)
        for at, value, n in edits:
            buf[at:at + n] = (value % 2 ** (8 * n)).to_bytes(n, "little")
        _case(fuzz_dir, bytes(buf))

    run()
    assert COUNTS["gguf"] - start >= N_FIELDS * 0.9


def _kv_file(key: bytes, vtype: int, payload: bytes, pad: int = 122) -> bytes:
    b = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    b += struct.pack("<I", vtype) + payload
    return b + bytes(max(0, pad - len(b)))


@pytest.mark.parametrize("data", [
    _kv_file(b"abc", 9, struct.pack("<IQ", 0, 2**62)),  # the 122-byte array bomb
    _kv_file(b"abc", 9, struct.pack("<IQ", 8, 2**40)),  # 2^40 strings
    _kv_file(b"abc", 8, struct.pack("<Q", 2**63)),  # string longer than the file
    _kv_file(b"abc", 99, b""),  # unknown value type
    b"GGUF" + struct.pack("<IQQ", 3, 2**60, 0) + bytes(100),  # 2^60 tensors
    b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60) + bytes(100),  # 2^60 KV pairs
    b"GGUF" + struct.pack("<IQQ", 7, 0, 0) + bytes(100),  # unknown version
])
def test_listed_bad_files_are_refused_fast(fuzz_dir, data):
    path = fuzz_dir / "bad.gguf"
    path.write_bytes(data)
    assert run_case("gguf-listed", path, _load) is None


def test_orig_shape_must_be_ints(fuzz_dir, tmp_path):
    from wanmoe.errors import CheckpointError

    path = write_gguf(tmp_path / "o.gguf", {"w": torch.zeros(4, 8)},
                      metadata={"comfy.gguf.orig_shape.w": "32"})
    with pytest.raises(CheckpointError, match="orig_shape.w.*list of at most 8 non-negative integers"):
        GGUFSource(path)
