"""Fuzz the .pth reader: a mutated torch checkpoint loads what weights-only `torch.load` gives,
or is refused with a WanmoeError in one line; never another exception, a hang or a huge alloc."""

import io
import warnings
import zipfile

import pytest
import torch
from fuzzlib import COUNTS, byte_mutation, fuzz_settings, run_case
from hypothesis import given

from wanmoe.loading.sources import PickleSource

N_ZIP, N_LEGACY = 300, 150


def _state():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(2, 3, generator=g), "b.bias": torch.randn(4, generator=g).bfloat16(),
            "c.index": torch.arange(3)}


def _saved(**kw) -> bytes:
    buf = io.BytesIO()
    torch.save(_state(), buf, **kw)
    return buf.getvalue()


ZIP = _saved()
LEGACY = _saved(_use_new_zipfile_serialization=False)


def _load(path):
    with PickleSource(path) as src:
        return {k: src.get(k).clone() for k in src.keys()}


def _reference(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=True, map_location="cpu",
                          mmap=zipfile.is_zipfile(path))


def _case(fuzz_dir, data: bytes):
    path = fuzz_dir / "m.pth"
    path.write_bytes(data)
    got = run_case("pth", path, _load)
    if got is not None:  # it loaded: exactly what torch's own weights-only load returns
        ref = _reference(path)
        ref = ref.get("state_dict", ref) if isinstance(ref, dict) else ref
        assert set(got) == set(ref)
        for k, t in got.items():
            assert t.dtype == ref[k].dtype and t.shape == ref[k].shape
            assert torch.equal(t.view(torch.uint8) if t.numel() else t,
                               ref[k].view(torch.uint8) if t.numel() else ref[k])


def test_unmutated_files_load(fuzz_dir):
    for data in (ZIP, LEGACY):
        _case(fuzz_dir, data)
        assert _load(fuzz_dir / "m.pth")["c.index"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("base,n", [(ZIP, N_ZIP), (LEGACY, N_LEGACY)], ids=["zip", "legacy"])
def test_fuzz_pth_bytes(fuzz_dir, base, n):
    start = COUNTS.get("pth", 0)

    @fuzz_settings(n)
    @given(data=byte_mutation(base, hot=len(base)))
    def run(data):
        _case(fuzz_dir, data)

    run()
    assert COUNTS["pth"] - start >= n * 0.9


@pytest.mark.parametrize("data", [b"", b"\x80\x04K\x01.", bytes(range(256)) * 3, b"PK\x03\x04" + bytes(60)])
def test_listed_bad_files_are_refused(fuzz_dir, data):
    path = fuzz_dir / "bad.pth"
    path.write_bytes(data)
    assert run_case("pth-listed", path, _load) is None
