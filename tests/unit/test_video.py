"""MP4/PNG/GIF writing, read back with independent decoders (PyAV, zlib, Pillow if present)."""

import struct
import zlib

import numpy as np
import pytest

from wanmoe.errors import InputError
from wanmoe.video import read_mp4, save_gif, save_png_strip, write_mp4


def _smooth_clip(f=5, h=48, w=64):
    """Gradients that H.264 at crf 10 reproduces closely (noise would not be)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + 10 * i) % 256, (y * 5) % 256, np.full_like(x, 40 * i)], -1)
              for i in range(f)]
    return np.stack(frames).astype(np.uint8)


def test_mp4_roundtrip_frames_size_fps(tmp_path):
    clip = _smooth_clip()
    out = write_mp4(tmp_path / "a.mp4", clip, fps=16)
    frames, fps = read_mp4(out)
    assert frames.shape == clip.shape and fps == 16
    # lossy codec + yuv420p chroma subsampling: mean error of a few levels is expected
    assert np.abs(frames.astype(int) - clip).mean() < 4
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temp file left behind


def test_mp4_odd_size_refused_or_padded(tmp_path):
    clip = _smooth_clip(h=47)
    with pytest.raises(InputError, match="64x47 has an odd side"):
        write_mp4(tmp_path / "odd.mp4", clip, fps=24)
    assert not any(tmp_path.iterdir())  # nothing half-written
    frames, _ = read_mp4(write_mp4(tmp_path / "odd.mp4", clip, fps=24, pad_odd=True))
    assert frames.shape == (5, 48, 64, 3)


def test_mp4_failure_leaves_existing_file_untouched(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"old")
    with pytest.raises(InputError):
        write_mp4(target, _smooth_clip().astype(np.float32), fps=16)
    assert target.read_bytes() == b"old"


def _decode_png(data: bytes) -> np.ndarray:
    """Independent PNG reader for RGB8 filter-0 images (the format the writer promises)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(tag + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if tag == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_strip_layout(tmp_path):
    clip = _smooth_clip(f=9)
    path = save_png_strip(clip, tmp_path / "s.png", n=3, gap=2)
    img = _decode_png(path.read_bytes())
    assert img.shape == (48, 3 * 64 + 2 * 2, 3)
    for k, src in enumerate((0, 4, 8)):  # evenly spaced, first and last included
        assert (img[:, k * 66:k * 66 + 64] == clip[src]).all()
    pil = pytest.importorskip("PIL.Image")
    assert (np.array(pil.open(path)) == img).all()


def test_gif_frame_count(tmp_path):
    import av

    path = save_gif(tmp_path / "a.gif", _smooth_clip(f=4), fps=8)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)


def test_frames_to_uint8_clamps_and_truncates():
    """spec §1.4: clamp to [-1, 1], (x+1)/2, x255, truncate (not round); [3,T,H,W] -> [T,H,W,3]."""
    import torch

    from wanmoe.pipeline import frames_to_uint8

    x = torch.tensor([-1.5, -1.0, 0.0, 254.9 / 255 * 2 - 1, 1.0, 1.2])  # 6 pixel values
    video = x.view(1, 1, 1, 6).expand(3, 1, 1, 6)  # [3, T=1, H=1, W=6]
    out = frames_to_uint8(video)
    assert out.shape == (1, 1, 6, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]  # 127.5 -> 127, 254.9 -> 254
