"""Prompt-adherence scorer for the demo model, by plain pixel analysis.

For a video it finds the background (median of the border pixels, named by the nearest
background colour), the foreground mask (pixels far from it), the dominant object colour(s)
(nearest palette colour by pixel vote), the object count (connected components) and the motion
(centroid track and area). `python -m
wanmoe.demo.evaluate` generates held-out prompts with the demo model and prints the table.
"""

from __future__ import annotations

import argparse
import math
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanmoe.demo.clips import (BACKGROUNDS, COLOURS, DIRECTIONS, Scene, held_out_scenes, is_light,
                               render)

FG_THRESHOLD = 60.0  # RGB distance from the background that counts as object
MIN_AREA_FRAC = 0.004  # components smaller than this fraction of the frame are noise
MOVE_FRAC = 0.15  # net centroid travel (fraction of the side) that counts as a translation


@dataclass(frozen=True)
class ClipAnalysis:
    """What the pixels show: colours by share, object count, motion class, centroid track."""

    colours: tuple[str, ...]
    count: int
    motion: str
    track: tuple[tuple[float, float, float], ...]  # (x, y, area) per frame, NaN when empty
    background: str = ""  # nearest BACKGROUNDS colour to the median border pixel


def _border_colour(f: np.ndarray) -> np.ndarray:
    """Median RGB of a frame's 2-pixel border (float32 [3])."""
    border = np.concatenate([f[:2].reshape(-1, 3), f[-2:].reshape(-1, 3),
                             f[:, :2].reshape(-1, 3), f[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0)


def _foreground(frame: np.ndarray) -> np.ndarray:
    """Bool mask [H, W] of pixels far from the background (median of a 2-pixel border)."""
    f = frame.astype(np.float32)
    return np.linalg.norm(f - _border_colour(f), axis=-1) > FG_THRESHOLD


def _background_name(frames: np.ndarray) -> str:
    """The BACKGROUNDS entry nearest to the border colour of the middle frame."""
    bg = _border_colour(frames[len(frames) // 2].astype(np.float32))
    return min(BACKGROUNDS, key=lambda b: float(np.linalg.norm(bg - np.array(BACKGROUNDS[b][0]))))


def _components(mask: np.ndarray) -> torch.Tensor:
    """Connected-component labels [H, W] (8-neighbour; 0 = background) by max propagation."""
    m = torch.from_numpy(mask)[None, None]  # [1, 1, H, W]
    h, w = mask.shape
    lab = torch.where(m, torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w), 0.0)
    while True:
        new = torch.where(m, torch.nn.functional.max_pool2d(lab, 3, 1, 1), 0.0)
        if torch.equal(new, lab):
            return lab[0, 0]
        lab = new


def _count(mask: np.ndarray) -> int:
    """Number of components covering at least MIN_AREA_FRAC of the frame (on a 2x-pooled mask)."""
    h, w = mask.shape
    small = mask[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
    lab = _components(small)
    _, sizes = torch.unique(lab[lab > 0], return_counts=True)
    return int((sizes >= MIN_AREA_FRAC * small.size).sum())


def _palette_votes(frames: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Share of foreground pixels whose nearest palette colour is each colour name."""
    px = frames[masks].astype(np.float32)  # [N, 3]
    if len(px) == 0:
        return {}
    pal = np.array(list(COLOURS.values()), dtype=np.float32)  # [K, 3]
    nearest = np.linalg.norm(px[:, None] - pal[None], axis=-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(pal)) / len(px)
    return {name: float(c) for name, c in zip(COLOURS, counts)}


def _classify_motion(track: np.ndarray, side: int) -> str:
    """Motion class from the (x, y, area) track: 8 directions, bounce, grow, shrink, still."""
    ok = track[~np.isnan(track[:, 0])]
    if len(ok) < 4:
        return "none"
    start, end = ok[:3].mean(0), ok[-3:].mean(0)
    dx, dy = end[0] - start[0], end[1] - start[1]
    if math.hypot(dx, dy) >= MOVE_FRAC * side:
        angle = math.degrees(math.atan2(-dy, dx)) % 360  # 0 = right, 90 = up
        sectors = ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"]
        return sectors[int(((angle + 22.5) % 360) // 45)]
    if np.ptp(ok[:, 1]) >= MOVE_FRAC * side:
        return "bounce"
    ratio = end[2] / max(start[2], 1.0)
    if ratio >= 1.5:
        return "grow"
    if ratio <= 1 / 1.5:
        return "shrink"
    return "still"


def analyse(frames: np.ndarray) -> ClipAnalysis:
    """Analyse a uint8 video [T, H, W, 3]."""
    masks = np.stack([_foreground(f) for f in frames])  # [T, H, W]
    t, h, w = masks.shape
    yy, xx = np.mgrid[0:h, 0:w]
    track = []
    for m in masks:
        a = float(m.sum())
        track.append((xx[m].mean(), yy[m].mean(), a) if a >= MIN_AREA_FRAC * m.size
                     else (math.nan, math.nan, a))
    votes = _palette_votes(frames, masks)
    colours = tuple(sorted((c for c, v in votes.items() if v >= 0.05), key=lambda c: -votes[c]))
    counts = sorted(_count(masks[i]) for i in (0, t // 2, t - 1))
    motion = _classify_motion(np.array(track, dtype=np.float64), min(h, w))
    return ClipAnalysis(colours, counts[1], motion, tuple(track), _background_name(frames))


def score(scene: Scene, a: ClipAnalysis) -> dict[str, bool | None]:
    """Per-prompt hits: colour (all named colours are the dominant ones), direction, count,
    background (only when the caption names one)."""
    want = [o.colour for o in scene.objects]
    motion = scene.objects[0].motion
    colour_ok = sorted(a.colours[: len(want)]) == sorted(want)
    direction_ok = (a.motion == motion) if motion in DIRECTIONS else None
    named_bg = "background" in scene.caption or "backdrop" in scene.caption  # else: any
    return {"colour": colour_ok, "direction": direction_ok, "motion": a.motion == motion,
            "count": a.count == len(scene.objects),
            "background": (a.background == scene.background) if named_bg else None}


def summarise(hits: list[dict[str, bool | None]]) -> dict[str, float]:
    """Accuracy per metric over the prompts where it applies."""
    out = {}
    for k in ("colour", "direction", "motion", "count", "background"):
        vals = [h[k] for h in hits if h[k] is not None]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


def format_table(scenes: list[Scene], analyses: list[ClipAnalysis], hits: list[dict]) -> str:
    """Markdown table, one row per prompt, then the accuracies."""
    lines = ["| # | prompt | want colour / motion | got colours / motion / count | ok |",
             "|---|---|---|---|---|"]
    for i, (s, a, h) in enumerate(zip(scenes, analyses, hits)):
        want = "+".join(o.colour for o in s.objects) + " / " + s.objects[0].motion
        got = f"{'+'.join(a.colours) or '-'} / {a.motion} / {a.count}"
        ok = "".join(k[0].upper() if v else ("." if v is None else "x")
                     for k, v in h.items())
        lines.append(f"| {i} | {s.caption} | {want} | {got} | {ok} |")
    acc = summarise(hits)
    n_dir = sum(h["direction"] is not None for h in hits)
    lines.append("")
    lines.append(f"prompts: {len(hits)} (direction scored on {n_dir} translation prompts)")
    lines.append(" | ".join(f"{k} accuracy: {100 * v:.1f} %" for k, v in acc.items()))
    for name, pick in (("light", True), ("dark", False)):
        sub = [h for s, h in zip(scenes, hits) if is_light(s.background) == pick]
        if sub and len(sub) < len(hits):
            lines.append(f"on {name} backgrounds ({len(sub)} prompts): " + " | ".join(
                f"{k} {100 * v:.1f} %" for k, v in summarise(sub).items()))
    return "\n".join(lines)


def write_png(image: np.ndarray, path: str | Path) -> None:
    """Write a uint8 RGB image [H, W, 3] as PNG (zlib only, no imaging library needed)."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def frame_strip(frames: np.ndarray, every: int = 4) -> np.ndarray:
    """Frames side by side [H, n*W, 3] (every `every`-th frame, last frame included)."""
    idx = list(range(0, len(frames), every))
    if idx[-1] != len(frames) - 1:
        idx.append(len(frames) - 1)
    return np.concatenate([frames[i] for i in idx], axis=1)


def run(scenes: list[Scene], generate) -> tuple[list[ClipAnalysis], list[dict], list[np.ndarray]]:
    """Generate (or render) every scene with `generate(scene) -> uint8 video` and score it."""
    analyses, hits, videos = [], [], []
    for s in scenes:
        v = generate(s)
        a = analyse(v)
        analyses.append(a)
        hits.append(score(s, a))
        videos.append(v)
    return analyses, hits, videos


def _model_generator(checkpoint: str | None, seed: int, **settings):
    """generate(scene) through the public pipeline (demo model when checkpoint is None);
    `settings` (steps, shift, guide_scale) left at None use the model's preset."""
    from wanmoe.pipeline import load_pipeline

    pipe = load_pipeline(checkpoint)
    kwargs = {"seed": seed, "progress": False} | {k: v for k, v in settings.items() if v is not None}

    stats = {"forwards": 0, "skipped": 0}

    def generate(scene: Scene) -> np.ndarray:
        result = pipe.generate(scene.caption, **kwargs)
        for key, n in result.cache_stats.items():
            stats[key] += n
        frames = result.frames
        return frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)

    generate.cache_stats = stats
    return generate


def main(argv: list[str] | None = None) -> int:
    """CLI: score held-out prompts and print the table."""
    ap = argparse.ArgumentParser(prog="python -m wanmoe.demo.evaluate", description=__doc__)
    ap.add_argument("--n", type=int, default=60, help="number of held-out prompts (default 60)")
    ap.add_argument("--two-objects", action="store_true", help="two objects per prompt")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: preset)")
    ap.add_argument("--shift", type=float, default=None, help="sampling shift (default: preset)")
    ap.add_argument("--guide-scale", type=float, default=None,
                    help="one CFG scale for both experts (default: the preset's per expert)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed")
    ap.add_argument("--cache", default=None, help="step cache, as `wanmoe generate --cache`")
    ap.add_argument("--prompt-seed", type=int, default=12345,
                    help="which held-out prompts (default 12345: the reported test set; tune "
                    "sampling settings on another seed)")
    ap.add_argument("--light-backgrounds", action="store_true",
                    help="also draw prompts on clips.LIGHT_BACKGROUNDS (for a model fine-tuned "
                    "with them, benchmarks/demo_light_finetune.py)")
    ap.add_argument("--ground-truth", action="store_true",
                    help="score the rendered clips themselves (checks the scorer)")
    ap.add_argument("--strip", default=None,
                    help="write a PNG strip of 4 videos spread over the prompt list here")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.light_backgrounds:
        from wanmoe.demo.clips import LIGHT_BACKGROUNDS

        BACKGROUNDS.update(LIGHT_BACKGROUNDS)  # the same dict clips draws from
    scenes = held_out_scenes(args.n, seed=args.prompt_seed, num_objects=2 if args.two_objects else 1)
    gen = render if args.ground_truth else _model_generator(
        args.checkpoint, args.seed, steps=args.steps, shift=args.shift, guide_scale=args.guide_scale,
        cache=args.cache)
    t0 = time.perf_counter()
    analyses, hits, videos = run(scenes, gen)
    print(format_table(scenes, analyses, hits))
    print(f"time: {time.perf_counter() - t0:.1f} s for {len(scenes)} videos")
    stats = getattr(gen, "cache_stats", None)
    if stats and stats["forwards"]:
        print(f"cache: skipped {stats['skipped']} of {stats['forwards']} DiT forwards")
    if args.strip:
        rows = list(range(0, len(videos), max(1, len(videos) // 4)))[:4]
        write_png(np.concatenate([frame_strip(videos[i]) for i in rows], axis=0), args.strip)
        print(f"strip rows: {', '.join(f'#{i} {scenes[i].caption!r}' for i in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
