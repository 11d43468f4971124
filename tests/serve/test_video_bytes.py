"""The server's MP4s are a function of the frames alone (write_mp4 threads=1), so a resumed job
can be checked against an uninterrupted one byte for byte."""

import numpy as np

from wanmoe.video import read_mp4, write_mp4


def _smooth(rng, shape):
    """Low-frequency colour frames (like a generated video), not noise."""
    f, h, w, _ = shape
    small = rng.random((f, h // 8 + 1, w // 8 + 1, 3))
    big = small.repeat(8, axis=1).repeat(8, axis=2)[:, :h, :w]
    return (big * 200 + 20).astype(np.uint8)


def test_same_frames_same_bytes_whatever_was_encoded_before(tmp_path):
    rng = np.random.default_rng(0)
    frames = _smooth(rng, (5, 64, 64, 3))
    files = set()
    for i in range(8):  # other sizes in between changed the next file before the fix
        other = (rng.random((17, 128, 128, 3) if i % 2 else (1, 32, 32, 3)) * 255).astype(np.uint8)
        write_mp4(tmp_path / "other.mp4", other, 16, threads=1)
        write_mp4(tmp_path / "v.mp4", frames, 16, threads=1)
        files.add((tmp_path / "v.mp4").read_bytes())
    assert len(files) == 1
    decoded, fps = read_mp4(tmp_path / "v.mp4")
    assert decoded.shape == frames.shape and fps == 16
