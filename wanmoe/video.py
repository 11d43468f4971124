"""Writing generated frames: H.264 MP4 (PyAV), PNG strips and GIFs for documentation.

Frames are uint8 tensors or arrays `[F, H, W, 3]` (RGB). Files are written to a temporary name
beside the target and renamed at the end, so a failure never leaves a half-written file behind.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import InputError

# The official writer uses imageio-ffmpeg with quality 8, which imageio maps to
# crf = int((1 - 8/10) * 51) = 10 for libx264.
OFFICIAL_CRF = 10


def _as_frames(frames) -> np.ndarray:
    """uint8 [F, H, W, 3] numpy view of a tensor or array, checked."""
    arr = frames.detach().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise InputError(f"frames must have shape [F, H, W, 3] with F >= 1, got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _atomic_path(path: Path, suffix: str):
    """Temp path in the target folder, renamed onto `path` only if the body succeeds; the file
    gets ordinary permissions (umask), not mkstemp's 0600 (`outputs.atomic_path`)."""
    from .outputs import atomic_path

    return atomic_path(path, suffix)


def _pad_even(arr: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so H and W are even (yuv420p needs even sizes)."""
    ph, pw = arr.shape[1] % 2, arr.shape[2] % 2
    return np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else arr


def write_mp4(path, frames, fps: float, *, crf: int = OFFICIAL_CRF, pad_odd: bool = False,
              threads: int | None = None) -> Path:
    """Write H.264 (libx264, yuv420p) MP4. Odd sizes are refused unless `pad_odd` (edge padding).

    `threads`: x264 threads (None: x264's choice). With several threads the same frames can
    encode differently from one call to the next (seen: +-7 levels after decoding); threads=1
    makes the file a function of the frames alone (the server uses it)."""
    import av  # lazy: only needed when writing video

    arr = _as_frames(frames)
    _, h, w, _ = arr.shape
    if (h % 2 or w % 2) and not pad_odd:
        raise InputError(f"frame size {w}x{h} has an odd side; H.264 yuv420p needs even width and "
                         f"height (pass pad_odd=True to replicate the last row/column)")
    arr = _pad_even(arr)
    if not fps or fps <= 0:
        raise InputError(f"fps {fps!r} must be > 0")
    path = Path(path)
    with _atomic_path(path, ".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = arr.shape[2], arr.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), **({"threads": str(threads)} if threads else {})}
            for frame in arr:
                # converted here, not inside encode(): the encoder's own conversion gave
                # different bytes for the same frames depending on earlier encodes in the process
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)
    return path


def read_mp4(path) -> tuple[np.ndarray, float]:
    """Decode a video file -> (uint8 [F, H, W, 3], fps). Used by tests."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps


def _pick(arr: np.ndarray, n: int) -> np.ndarray:
    """n frames evenly spaced over the clip, first and last included."""
    idx = np.linspace(0, arr.shape[0] - 1, num=min(n, arr.shape[0])).round().astype(int)
    return arr[idx]


def _png_bytes(img: np.ndarray) -> bytes:
    """Minimal PNG encoder (8-bit RGB, filter 0) so no image library is needed."""
    h, w, _ = img.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)  # [H, 1+3W]
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 = RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b""))


def save_png(path, image) -> Path:
    """Write one uint8 [H, W, 3] image as PNG."""
    img = np.ascontiguousarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be uint8 [H, W, 3], got {img.dtype} {list(img.shape)}")
    path = Path(path)
    with _atomic_path(path, ".png") as tmp:
        tmp.write_bytes(_png_bytes(img))
    return path


def save_png_strip(frames, path, n: int = 8, gap: int = 2) -> Path:
    """n evenly spaced frames side by side (white `gap` pixels between) as one PNG."""
    arr = _pick(_as_frames(frames), n)
    f, h, w, _ = arr.shape
    strip = np.full((h, f * w + (f - 1) * gap, 3), 255, np.uint8)
    for i, frame in enumerate(arr):
        strip[:, i * (w + gap): i * (w + gap) + w] = frame
    return save_png(path, strip)


def save_gif(path, frames, fps: float) -> Path:
    """Animated GIF through PyAV's gif encoder (palette per frame, loops forever)."""
    import av

    arr = _pad_even(_as_frames(frames))
    path = Path(path)
    with _atomic_path(path, ".gif") as tmp:
        with av.open(str(tmp), mode="w", format="gif") as container:
            stream = container.add_stream("gif", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = arr.shape[2], arr.shape[1]
            stream.pix_fmt = "rgb8"  # fixed 3-3-2 palette: good enough for documentation
            for frame in arr:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="rgb8")
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def save_latents(path, latents) -> Path:
    """Final latents as safetensors (key `latents`, float32), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with _atomic_path(path, ".safetensors") as tmp:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp))
    return path
