"""Tensor sources: round trips against the safetensors/torch readers and clean errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wanmoe.errors import CheckpointError
from wanmoe.loading.containers import open_tensors
from wanmoe.loading.sources import TensorSource
from wanmoe.testing.small import write_sharded


def sample():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).bfloat16(),
            "c": torch.randn(2, 2, generator=g).to(torch.float8_e4m3fn), "s": torch.tensor(2.5),
            "i": torch.arange(6, dtype=torch.int64).reshape(2, 3), "e": torch.zeros(0, 3)}


def _same(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))


def test_safetensors_round_trip_and_cast(tmp_path):
    sd = sample()
    save_file(sd, tmp_path / "x.safetensors", metadata={"format": "pt"})
    ref = load_file(tmp_path / "x.safetensors")
    with open_tensors(tmp_path / "x.safetensors") as src:
        assert set(src.keys()) == set(sd) and src.metadata == {"format": "pt"}
        for k in sd:
            assert src.shape(k) == tuple(sd[k].shape) and src.dtype(k) == sd[k].dtype
            assert _same(src.get(k), ref[k]), k
        assert torch.equal(src.get("a", torch.bfloat16), ref["a"].bfloat16())
        assert torch.equal(src.get("b", torch.float32), ref["b"].float())
        assert src.nbytes("a") == 48


def test_sharded_set_via_index_or_folder(tmp_path):
    sd = {k: v for k, v in sample().items() if k != "e"}
    idx = write_sharded(tmp_path / "set", sd, None, shards=3)
    for p in (idx, tmp_path / "set"):
        with open_tensors(p) as src:
            assert sorted(src.keys()) == sorted(sd)
            for k in sd:
                assert _same(src.get(k), sd[k]), k
            assert src.file_of("a").name.startswith("diffusion_pytorch_model-0000")


def test_pth_round_trip(tmp_path):
    sd = sample()
    torch.save(sd, tmp_path / "x.pth")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    for f in ("x.pth", "wrapped.pt"):
        src = open_tensors(tmp_path / f)
        assert isinstance(src, TensorSource) and set(src.keys()) == set(sd)
        assert all(_same(src.get(k), sd[k]) for k in sd)


def test_gguf_opens_as_a_tensor_source(tmp_path):
    from wanmoe.loading.gguf import write_gguf

    write_gguf(tmp_path / "x.gguf", {"w": torch.randn(4, 8), "b": torch.randn(4)})
    src = open_tensors(tmp_path / "x.gguf")
    assert isinstance(src, TensorSource) and src.path == tmp_path / "x.gguf"
    assert src.shape("w") == (4, 8) and src.nbytes("w") == 4 * 8 * 4


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors does not exist"):
        open_tensors(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.001])
def test_truncated_safetensors_names_file_and_problem(tmp_path, fraction):
    save_file({"a": torch.randn(64, 64)}, tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*(truncated|not a safetensors)"):
        open_tensors(tmp_path / "cut.safetensors")


def test_corrupt_header(tmp_path):
    (tmp_path / "x.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json" + b" " * 40)
    with pytest.raises(CheckpointError, match="x.safetensors.*not valid JSON"):
        open_tensors(tmp_path / "x.safetensors")


def test_truncated_pth(tmp_path):
    torch.save({"a": torch.randn(64, 64)}, tmp_path / "x.pth")
    data = (tmp_path / "x.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupt)"):
        open_tensors(tmp_path / "cut.pth")


def test_shard_listed_but_absent(tmp_path):
    sd = {k: v for k, v in sample().items() if k != "e"}
    idx = write_sharded(tmp_path / "set", sd, None, shards=2)
    (tmp_path / "set" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard diffusion_pytorch_model-00002-of-00002.safetensors.*missing"):
        open_tensors(idx)


def test_index_lists_tensor_absent_from_shard(tmp_path):
    idx = write_sharded(tmp_path / "set", {"a": torch.ones(2), "b": torch.ones(2)}, None, shards=2)
    index = json.loads(idx.read_text())
    index["weight_map"]["ghost"] = index["weight_map"]["a"]
    idx.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'ghost'"):
        open_tensors(idx)


def test_unknown_extension(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"0")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        open_tensors(tmp_path / "x.npz")
