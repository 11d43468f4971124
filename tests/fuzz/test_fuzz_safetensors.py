"""Fuzz the safetensors reader: a mutated file loads exactly what its header describes, or is
refused with a WanmoeError; never another exception, a hang or an allocation beyond the file."""

import io
import json
import struct

import pytest
import torch
from fuzzlib import COUNTS, INTERESTING, byte_mutation, fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save

from wanmoe.loading.sources import SafetensorsFile

N_BYTES, N_HEADER = 500, 500


def _tiny() -> bytes:
    g = torch.Generator().manual_seed(0)
    return save({
        "a.weight": torch.randn(2, 3, generator=g),
        "b.bias": torch.randn(4, generator=g).half(),
        "c.norm": torch.randn(2, 2, generator=g).bfloat16(),
        "d.index": torch.arange(3),
        "e.empty": torch.zeros(0, 5, dtype=torch.uint8),
        "f.mask": torch.tensor([True, False]),
        "g.fp8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }, metadata={"format": "pt", "note": "fuzz"})


BASE = _tiny()
HEADER_LEN = struct.unpack("<Q", BASE[:8])[0]


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


VALUES = st.one_of(st.sampled_from(INTERESTING + [-1, -(2**63), 3, 4, 5, 6, 12, 24]),
                   st.integers(-10, 200), st.none(), st.booleans(), st.text(max_size=4),
                   st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.lists(st.integers(-2, 40), max_size=4))


@st.composite
def header_mutation(draw):
    """Structured edits of the JSON header: offsets, shapes, dtypes, metadata, whole entries."""
    header, body = _split(BASE)
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["data_offsets", "shape", "dtype", "entry", "meta", "dup",
                                      "body", "root"]))
        entry = header.get(name)
        if field == "data_offsets" and isinstance(entry, dict):
            i = draw(st.integers(0, 2))
            offs = list(entry["data_offsets"])
            if i < 2:
                offs[i] = draw(VALUES)
            else:  # point at another tensor's bytes
                other = header[draw(st.sampled_from(names))]
                offs = list(other["data_offsets"]) if isinstance(other, dict) else offs
            entry["data_offsets"] = offs
        elif field == "shape" and isinstance(entry, dict):
            entry["shape"] = draw(st.one_of(st.lists(VALUES, max_size=4), VALUES))
        elif field == "dtype" and isinstance(entry, dict):
            entry["dtype"] = draw(st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL",
                                                             "F8_E4M3", "F64", "Q4", "f32", ""]), VALUES))
        elif field == "entry":
            header[name] = draw(VALUES)
        elif field == "meta":
            header["__metadata__"] = draw(st.one_of(VALUES, st.dictionaries(st.text(max_size=3), VALUES,
                                                                              max_size=2)))
        elif field == "body":
            cut = draw(st.integers(0, len(body)))
            body = body[:cut] if draw(st.booleans()) else body + bytes(draw(st.integers(1, 64)))
        elif field == "root":
            return _join(draw(st.sampled_from([[], [1, 2], "x", 3, None, True])), body)
    data = _join(header, body)
    if draw(st.booleans()) and draw(st.booleans()):  # duplicate a key inside the JSON text
        data = data.replace(b'"b.bias"', b'"a.weight"', 1)
        data = struct.pack("<Q", struct.unpack("<Q", data[:8])[0]) + data[8:]
    return data


def _load(path):
    with SafetensorsFile(path) as src:
        out = {k: src.get(k) for k in src.keys()}
        casts = {k: src.get(k, torch.float32) for k in src.keys()
                 if src.dtype(k).is_floating_point}
        return out, casts, dict(src.metadata)


def _check_against_header(data: bytes, result) -> None:
    """The oracle: each tensor is exactly the bytes its header entry names, as that dtype/shape."""
    tensors, casts, metadata = result
    header, body = _split(data)
    assert metadata == (header.get("__metadata__") or {})
    assert set(tensors) == {k for k in header if k != "__metadata__"}
    for name, t in tensors.items():
        info = header[name]
        a, b = info["data_offsets"]
        assert list(t.shape) == info["shape"]
        assert t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() == body[a:b]
        if name in casts:
            assert torch.equal(casts[name], t.float()) or torch.isnan(t.float()).any()


def _case(fuzz_dir, data: bytes):
    path = fuzz_dir / "m.safetensors"
    path.write_bytes(data)
    result = run_case("safetensors", path, _load)
    if result is not None:
        _check_against_header(data, result)


def test_unmutated_file_loads(fuzz_dir):
    _case(fuzz_dir, BASE)
    tensors, _, _ = _load(fuzz_dir / "m.safetensors")
    assert tensors["d.index"].tolist() == [0, 1, 2]


def test_fuzz_safetensors_bytes(fuzz_dir):
    start = COUNTS.get("safetensors", 0)

    @fuzz_settings(N_BYTES)
    @given(data=byte_mutation(BASE, hot=8 + HEADER_LEN))
    def run(data):
        _case(fuzz_dir, data)

    run()
    assert COUNTS["safetensors"] - start >= N_BYTES * 0.9


def test_fuzz_safetensors_header(fuzz_dir):
    start = COUNTS.get("safetensors", 0)

    @fuzz_settings(N_HEADER)
    @given(data=header_mutation())
    def run(data):
        _case(fuzz_dir, data)

    run()
    assert COUNTS["safetensors"] - start >= N_HEADER * 0.9


@pytest.mark.parametrize("data", [
    _join({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),  # reversed
    _join({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 0]}}, bytes(8)),  # zero length
    _join({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, bytes(8)),  # negative
    _join({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # overlap
    _join({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    _join({"x": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, bytes(8)),
    _join({"x": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8)),
    _join({"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
    _join({"__metadata__": {"k": 1}}, b""),
    _join([{"dtype": "F32"}], b""),
])
def test_listed_bad_headers_are_refused(fuzz_dir, data):
    path = fuzz_dir / "bad.safetensors"
    path.write_bytes(data)
    assert run_case("safetensors-listed", path, _load) is None
