"""Files and values from strangers (issue 11): each bad input is one `error:` line, exit 2, no
traceback, and causes that the headers show are reported before any weight loads."""

import json
import os
import shutil
import stat
import struct
import time

import pytest
import torch

from wanmoe import cli
from wanmoe.errors import InputError

TINY = ["--size", "64*64", "--frames", "5", "--steps", "1", "--device", "cpu", "--quiet"]
SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"


def _fails(capsys, *argv) -> str:
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error: ") for ln in lines) == 1
    return lines[-1]


def _gen(capsys, ckpt, tmp_path, *extra) -> str:
    return _fails(capsys, "generate", "a red ball", "--ckpt-dir", str(ckpt), *TINY,
                  "--out", str(tmp_path / "o.mp4"), *extra)


@pytest.fixture
def ckpt(a14b_dir, tmp_path):
    return shutil.copytree(a14b_dir, tmp_path / "ckpt")


def _edit_header(path, edit) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header = edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])


def _first_tensor(header) -> str:
    return next(k for k in header if k != "__metadata__")


def _set_offsets(kind):
    def edit(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = h[names[0]]["data_offsets"]
        h[names[0]]["data_offsets"] = {"reversed": [b, a], "zero": [a, a], "negative": [-8, b - a - 8],
                                       "overlap": h[names[1]]["data_offsets"]}[kind]
        if kind == "overlap":
            h[names[0]]["shape"], h[names[0]]["dtype"] = h[names[1]]["shape"], h[names[1]]["dtype"]
        return h
    return edit


# ---- safetensors offsets: generate, inspect and convert all refuse ---------------------------------

@pytest.mark.parametrize("kind", ["reversed", "zero", "negative", "overlap"])
def test_bad_data_offsets_refused_by_generate_inspect_convert(ckpt, tmp_path, capsys, no_weight_reads,
                                                               kind):
    shard = ckpt / "high_noise_model" / SHARD1
    _edit_header(shard, _set_offsets(kind))
    assert SHARD1 in _gen(capsys, ckpt, tmp_path)
    assert SHARD1 in _fails(capsys, "inspect", str(shard))
    assert SHARD1 in _fails(capsys, "convert", str(ckpt / "high_noise_model"), "--to", "bf16",
                            "--out", str(tmp_path / "c.safetensors"))
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "c.safetensors").exists()


def test_header_that_is_a_json_list(ckpt, tmp_path, capsys, no_weight_reads):
    shard = ckpt / "low_noise_model" / SHARD1
    _edit_header(shard, lambda h: [h])
    assert "not an object" in _gen(capsys, ckpt, tmp_path)


# ---- GGUF --------------------------------------------------------------------------------------

def _gguf_bomb(path):
    b = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"abc"
    b += struct.pack("<IIQ", 9, 0, 2**62)
    path.write_bytes(b + bytes(122 - len(b)))
    return path


def test_gguf_array_bomb_refused_at_once(ckpt, tmp_path, capsys, no_weight_reads):
    bomb = _gguf_bomb(tmp_path / "bomb.gguf")
    t0 = time.perf_counter()
    assert "bomb.gguf" in _fails(capsys, "inspect", str(bomb))
    assert "bomb.gguf" in _gen(capsys, ckpt, tmp_path, "--high", str(bomb),
                               "--low", str(ckpt / "low_noise_model"))
    assert time.perf_counter() - t0 < 5


def _write_gguf(path, tensors, metadata=None):
    gguf_mod = pytest.importorskip("gguf")  # noqa: F841
    from wanmoe.loading.gguf import write_gguf

    return write_gguf(path, tensors, metadata=metadata)


def test_gguf_dims_larger_than_the_file_refused_by_inspect(tmp_path, capsys):
    path = _write_gguf(tmp_path / "big.gguf", {"w": torch.zeros(8, 32)})
    data = bytearray(path.read_bytes())
    at = data.index(b"w", 40) + 1 + 4  # name, then n_dims (u32), then dims (u64 each)
    data[at:at + 8] = struct.pack("<Q", 2**37)
    path.write_bytes(bytes(data))
    line = _fails(capsys, "inspect", str(path))
    assert "big.gguf" in line and "GB" not in line


def test_gguf_orig_shape_not_a_list_of_ints(tmp_path, capsys):
    path = _write_gguf(tmp_path / "o.gguf", {"w": torch.zeros(4, 8)},
                       metadata={"comfy.gguf.orig_shape.w": "32"})
    assert "orig_shape" in _fails(capsys, "inspect", str(path))


# ---- .pth ----------------------------------------------------------------------------------------

def test_random_bytes_pth(ckpt, tmp_path, capsys, no_weight_reads):
    (ckpt / "Wan2.1_VAE.pth").write_bytes(os.urandom(4096))
    assert "Wan2.1_VAE.pth" in _gen(capsys, ckpt, tmp_path)


def test_legacy_pickle_pth_with_code(ckpt, tmp_path, capsys, no_weight_reads):
    import pickle

    with open(ckpt / "Wan2.1_VAE.pth", "wb") as fh:
        pickle.dump({"w": os.getcwd}, fh)  # would call a function if unpickled freely
    line = _gen(capsys, ckpt, tmp_path)
    assert "Wan2.1_VAE.pth" in line and "weights-only" in line


# ---- JSON configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("[]", "must hold a JSON object"),
    ('{"num_layers": "2"}', "'num_layers' is '2'"),
    ('{"num_layers": true}', "'num_layers' is True"),
    ('{"dim": 256, "num_heads": 3}', "not divisible by the head count 3"),
])
def test_bad_config_json(ckpt, tmp_path, capsys, no_weight_reads, text, message):
    cfg = ckpt / "high_noise_model" / "config.json"
    good = json.loads(cfg.read_text())
    bad = json.loads(text)
    cfg.write_text(json.dumps({**good, **bad} if isinstance(bad, dict) else bad))
    line = _gen(capsys, ckpt, tmp_path)
    assert "config.json" in line and message in line


@pytest.fixture(scope="module")
def wanmoe_dir(a14b_dir, tmp_path_factory):
    from wanmoe.testing.tiny import convert_to_wanmoe_layout

    return convert_to_wanmoe_layout(a14b_dir, tmp_path_factory.mktemp("wm") / "wm")


@pytest.mark.parametrize("text,message", [
    ("[]", "must hold a JSON object"),
    (None, "preset.dit.num_layers is '2'"),
])
def test_bad_wanmoe_json(wanmoe_dir, tmp_path, capsys, no_weight_reads, text, message):
    root = shutil.copytree(wanmoe_dir, tmp_path / "wm")
    meta = json.loads((root / "wanmoe.json").read_text())
    meta["preset"]["dit"]["num_layers"] = "2"
    (root / "wanmoe.json").write_text(text if text is not None else json.dumps(meta))
    line = _gen(capsys, root, tmp_path)
    assert "wanmoe.json" in line and message in line


def test_garbage_tokenizer_fails_before_weights(ckpt, tmp_path, capsys, no_weight_reads):
    (ckpt / "google" / "umt5-xxl" / "tokenizer.json").write_text('{"model": 5}')
    assert "tokenizer.json" in _gen(capsys, ckpt, tmp_path)


def test_unloadable_tokenizer_loads_before_any_weight(ckpt, tmp_path, capsys, monkeypatch):
    """A tokenizer.json that passes the cheap check but cannot be built fails before the DiT."""
    import wanmoe.loading.components as components

    def boom(*_a, **_k):
        raise AssertionError("a weight loaded before the tokenizer")

    monkeypatch.setattr(components, "load_dit", boom)
    (ckpt / "google" / "umt5-xxl" / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    assert "tokenizer" in _gen(capsys, ckpt, tmp_path)


# ---- pre-flight -------------------------------------------------------------------------------

def test_huge_size_refused_fast_before_weights(ckpt, tmp_path, capsys, no_weight_reads):
    t0 = time.perf_counter()
    line = _fails(capsys, "generate", "x", "--ckpt-dir", str(ckpt), "--size", "100000*100000",
                  "--device", "cpu", "--out", str(tmp_path / "o.mp4"))
    assert time.perf_counter() - t0 < 2.0
    assert "needs at least" in line and "TiB" in line and "has" in line


def test_absurd_frames_refused(ckpt, tmp_path, capsys, no_weight_reads):
    assert "frames 1000001" in _gen(capsys, ckpt, tmp_path, "--frames", "1000001")


def test_same_file_for_both_experts(ckpt, tmp_path, capsys, no_weight_reads):
    expert = str(ckpt / "high_noise_model")
    assert "same file" in _gen(capsys, ckpt, tmp_path, "--high", expert, "--low", expert)


def test_unwritable_outputs_refused_before_weights(ckpt, tmp_path, capsys, no_weight_reads):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "--out" in _fails(capsys, "generate", "x", "--ckpt-dir", str(ckpt), *TINY,
                             "--out", str(blocker / "o.mp4"))
    line = _gen(capsys, ckpt, tmp_path, "--save-latents", str(blocker / "sub" / "l.safetensors"))
    assert "--save-latents" in line
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_refused_before_weights(ckpt, tmp_path, capsys, no_weight_reads):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "cannot be written" in _gen(capsys, ckpt, tmp_path, "--save-latents",
                                           str(ro / "l.safetensors"))
    finally:
        ro.chmod(0o755)


def test_failed_run_leaves_no_folders(ckpt, tmp_path, capsys):
    (ckpt / "low_noise_model" / SHARD1).write_bytes(b"\x00" * 64)  # found while resolving
    out = tmp_path / "new" / "deeper" / "o.mp4"
    _fails(capsys, "generate", "x", "--ckpt-dir", str(ckpt), *TINY, "--out", str(out))
    assert not (tmp_path / "new").exists()


def test_outputs_atomic_with_umask_permissions(a14b_dir, tmp_path, capsys):
    out = tmp_path / "new" / "o.mp4"
    out.parent.mkdir()
    out.write_bytes(b"old")
    old_umask = os.umask(0o022)
    try:
        rc = cli.main(["generate", "x", "--ckpt-dir", str(a14b_dir), *TINY, "--out", str(out),
                       "--save-latents", str(tmp_path / "new" / "l.safetensors")])
    finally:
        os.umask(old_umask)
    assert rc == 0, capsys.readouterr().err
    assert out.read_bytes()[4:8] == b"ftyp"
    assert stat.S_IMODE((tmp_path / "new" / "l.safetensors").stat().st_mode) == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["l.safetensors", "o.mp4"]


# ---- Python API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bare_pipe():
    """A WanPipeline without models: generate() must refuse bad values before touching them."""
    from wanmoe.configs import T2V_A14B
    from wanmoe.pipeline import WanPipeline

    return WanPipeline(T2V_A14B, {}, None, None, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("kwargs,message", [
    ({"frames": True}, "frames True"),
    ({"size": (128.5, 128)}, "width 128.5"),
    ({"size": (128, 128, 1)}, "(width, height) pair"),
    ({"size": ("128", "128")}, "width '128'"),
    ({"steps": True}, "steps True"),
    ({"steps": 2.0}, "steps 2.0"),
    ({"seed": True}, "seed True"),
    ({"shift": "abc"}, "shift 'abc' is not a number"),
    ({"shift": True}, "not a bool"),
    ({"guide_scale": ["a", 1]}, "guide scale 'a' is not a number"),
    ({"guide_scale": object()}, "guide scale"),
    ({"boundary": "x"}, "boundary 'x' is not a number"),
    ({"boundary_snr": -1}, "boundary SNR -1"),
    ({"negative_prompt": 5}, "negative prompt must be a string"),
    ({"size": "100000*100000"}, "needs at least"),
])
def test_python_api_values(bare_pipe, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.").replace("*", r"\*")):
        bare_pipe.generate("a red ball", **kwargs)


def test_python_api_prompt_length(bare_pipe):
    with pytest.raises(InputError, match="characters; the limit"):
        bare_pipe.generate("a" * 200_000)
