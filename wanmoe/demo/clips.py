"""Procedural training clips for the demo model: flat shapes moving on flat backgrounds.

Everything is deterministic by seed and needs no download. A scene is 1-2 objects (shape,
colour, size, motion) on a background; `render` draws it as uint8 frames and `caption` writes
one of several templates about it. A fixed set of (colour, shape, motion) combinations is held
out (`is_held_out`): training scenes never contain them, evaluation prompts are drawn from them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

# Object colours (RGB). Names double as caption words and as evaluator classes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 40),
    "orange": (250, 140, 20),
    "purple": (150, 60, 210),
    "pink": (250, 130, 200),
    "white": (245, 245, 245),
    "cyan": (40, 215, 225),
}
# Backgrounds the demo model was trained on: dark or neutral; value = (RGB, caption words).
# An object is only drawn on a background it stands out from (`backgrounds_for`).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "black": ((12, 12, 12), ("black", "dark")),
    "dark blue": ((18, 28, 90), ("dark blue", "blue", "navy")),
    "dark green": ((20, 70, 35), ("dark green", "green")),
    "gray": ((110, 110, 110), ("gray", "grey")),
    "brown": ((90, 58, 30), ("brown",)),
}
# Light backgrounds: NOT in the shipped model's training set (so not in its vocabulary). A
# fine-tune with them (benchmarks/demo_light_finetune.py, which adds them to BACKGROUNDS) drew
# them but lost object colour; see benchmarks/results/demo_training.md, run 4.
LIGHT_BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "white": ((240, 240, 240), ("white",)),
    "light gray": ((195, 195, 195), ("light gray", "light grey")),
    "sky blue": ((135, 200, 240), ("sky blue", "light blue")),
    "beige": ((225, 210, 170), ("beige",)),
}
# Least RGB distance between an object colour and its background (the dark backgrounds' closest
# pair, green on gray, is 117; the scorer's foreground threshold is 60).
MIN_CONTRAST = 110.0
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
}
# Unit displacement per translation motion, image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1),
    "up-right": (1, -1), "up-left": (-1, -1), "down-right": (1, 1), "down-left": (-1, 1),
}
MOTIONS: tuple[str, ...] = (*DIRECTIONS, "bounce", "grow", "shrink", "still")
SIZES: dict[str, float] = {"small": 15.0, "medium": 20.0, "large": 25.0}  # half-extent, px @128

_DIR_WORDS: dict[str, tuple[str, ...]] = {
    "right": ("to the right", "right", "rightward"),
    "left": ("to the left", "left", "leftward"),
    "up": ("up", "upward"),
    "down": ("down", "downward"),
    "up-right": ("up and to the right", "diagonally up and right"),
    "up-left": ("up and to the left", "diagonally up and left"),
    "down-right": ("down and to the right", "diagonally down and right"),
    "down-left": ("down and to the left", "diagonally down and left"),
}
_VERBS = ("moves", "slides", "drifts", "travels", "glides")
_OTHER_PHRASES: dict[str, tuple[str, ...]] = {
    "bounce": ("bounces", "bounces up and down", "is bouncing"),
    "grow": ("grows", "gets bigger", "is growing"),
    "shrink": ("shrinks", "gets smaller", "is shrinking"),
    "still": ("stays still", "sits still", "does not move"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("",), "large": ("large", "big")}
TRAVEL = 0.45  # translation length as a fraction of the frame side
# Start jitter of a lone object around its motion's canonical start (frame fractions): small,
# so a caption pins down the whole track and the tiny DiT can learn motion in the CPU budget.
JITTER_ALONG = 0.04
JITTER_ACROSS = 0.1


@dataclass(frozen=True)
class SceneObject:
    """One object: what it is, how it moves, and where it starts (fraction of the frame)."""

    shape: str
    colour: str
    size: str
    motion: str
    start: tuple[float, float]  # (x, y) in [0, 1]


@dataclass(frozen=True)
class Scene:
    """A whole clip description: objects on a background, plus its caption."""

    objects: tuple[SceneObject, ...]
    background: str
    caption: str


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """True for the ~1/7 of (colour, shape, motion) triples that training never sees."""
    i, j, k = list(COLOURS).index(colour), list(SHAPES).index(shape), MOTIONS.index(motion)
    return (i + 2 * j + 3 * k) % 7 == 0


def held_out_triples() -> list[tuple[str, str, str]]:
    """All held-out (colour, shape, motion) triples, in a fixed order."""
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if is_held_out(c, s, m)]


def backgrounds_for(colours) -> list[str]:
    """The backgrounds (in BACKGROUNDS order) that every one of `colours` stands out from."""
    colours = tuple(colours)
    return [b for b, (rgb, _) in BACKGROUNDS.items()
            if all(math.dist(rgb, COLOURS[c]) >= MIN_CONTRAST for c in colours)]


def is_light(background: str) -> bool:
    """True for a light background (mean RGB above 150: white, light gray, sky blue, beige)."""
    rgb = (BACKGROUNDS.get(background) or LIGHT_BACKGROUNDS[background])[0]
    return sum(rgb) / 3 > 150


def _peak_scale(motion: str) -> float:
    """Largest size of the object over its track, in units of its starting half-extent class."""
    return 1.8 if motion in ("grow", "shrink") else 1.0


def _start_for(motion: str, half: float, rng: random.Random, spread: bool = False
               ) -> tuple[float, float]:
    """Start point (fractions) that keeps the whole path of the object inside the frame.

    A lone object (`spread=False`) starts near its motion's canonical start: the path is
    centred in the frame, jittered by JITTER_ALONG along the motion and JITTER_ACROSS across
    it. `spread=True` (two-object scenes) draws anywhere the path fits, so objects can be kept
    apart.
    """
    m = _peak_scale(motion) * half / 128 + 0.03  # margin in frame fractions
    dx, dy = DIRECTIONS.get(motion, (0, 0))
    if not spread:
        def jitter(d: float) -> float:
            amp = JITTER_ALONG if d else JITTER_ACROSS
            return rng.uniform(-amp, amp)

        x, y = 0.5 - dx * TRAVEL / 2 + jitter(dx), 0.5 - dy * TRAVEL / 2 + jitter(dy)
        if motion == "bounce":  # the hop (TRAVEL high) is centred vertically
            y = 0.5 + TRAVEL / 2 + rng.uniform(-JITTER_ALONG, JITTER_ALONG)
        lo_y = m + (TRAVEL if motion == "bounce" else 0.0)
        return (min(max(x, m), 1 - m), min(max(y, lo_y), 1 - m))

    def axis(d: float) -> float:
        lo, hi = m, 1 - m
        if d > 0:
            hi -= TRAVEL
        elif d < 0:
            lo += TRAVEL
        return rng.uniform(lo, max(lo, hi))

    x, y = axis(dx), axis(dy)
    if motion == "bounce":  # bounce rises up to TRAVEL above its floor y
        y = rng.uniform(m + TRAVEL, 1 - m)
    return (x, y)


def _separated_start(first: SceneObject, half: float, rng: random.Random
                     ) -> tuple[float, float] | None:
    """Start for a second object with the same motion that never touches `first` (or None)."""
    need = _peak_scale(first.motion) * 1.3 * (SIZES[first.size] + half) / 128 + 0.05
    for _ in range(50):
        p = _start_for(first.motion, half, rng, spread=True)
        if math.dist(p, first.start) >= need:
            return p
    return None


def _second_object(first: SceneObject, rng: random.Random) -> SceneObject | None:
    """A second object (other colour and shape, same motion, training triple) or None."""
    while True:
        o = _make_object(rng, False, avoid_colour=first.colour, spread=True)
        if o.shape != first.shape and not is_held_out(o.colour, o.shape, first.motion):
            break
    for size in dict.fromkeys((o.size, "small")):
        start = _separated_start(first, SIZES[size], rng)
        if start is not None:
            return SceneObject(o.shape, o.colour, size, first.motion, start)
    return None


def _make_object(rng: random.Random, held_out: bool, avoid_colour: str | None = None,
                 spread: bool = False) -> SceneObject:
    """Draw one object whose (colour, shape, motion) triple is in the requested split."""
    if held_out:
        pool = [t for t in held_out_triples() if t[0] != avoid_colour]
        colour, shape, motion = rng.choice(pool)
    else:
        while True:
            colour = rng.choice([c for c in COLOURS if c != avoid_colour])
            shape, motion = rng.choice(list(SHAPES)), rng.choice(MOTIONS)
            if not is_held_out(colour, shape, motion):
                break
    size = rng.choice(list(SIZES))
    return SceneObject(shape, colour, size, motion, _start_for(motion, SIZES[size], rng, spread))


def sample_scene(seed: int, held_out: bool = False, num_objects: int | None = None) -> Scene:
    """Deterministic scene for `seed`; `held_out` picks triples from the held-out set only."""
    rng = random.Random(seed * 7919 + (1 if held_out else 0))
    n = num_objects or (1 if rng.random() < 0.75 else 2)
    first = _make_object(rng, held_out, spread=n == 2)
    objects = [first]
    if n == 2:  # both objects share one motion so the caption stays one clause
        second = _second_object(first, rng)
        objects += [second] if second is not None else []
    objects = tuple(objects)
    background = rng.choice(backgrounds_for(o.colour for o in objects))
    return Scene(objects, background, caption(objects, background, rng))


# Caption templates ({subject} {action} {bg}) and the words that join nouns ("a"/"an", "and").
TEMPLATES: tuple[str, ...] = (
    "{subject} {action} on a {bg} background",
    "on a {bg} background, {subject} {action}",
    "{subject} {action} over a {bg} backdrop",
    "{subject} {action}",
)
_ARTICLES = ("a", "an")
_JOIN = "and"


def _noun(o: SceneObject, rng: random.Random, with_size: bool) -> str:
    size = rng.choice(_SIZE_WORDS[o.size]) if with_size else ""
    words = [size, o.colour, rng.choice(SHAPES[o.shape])]
    return " ".join(w for w in words if w)


def _plural_verb(verb: str) -> str:
    """"moves" -> "move" (the verbs of two-object captions)."""
    return verb[:-1]


def _plural_phrase(action: str) -> str:
    """"is bouncing" -> "are bouncing", "bounces" -> "bounce", "does not move" -> "do not move"."""
    action = action.replace("is ", "are ").replace("does ", "do ")
    return " ".join(w[:-1] if w in ("bounces", "grows", "shrinks", "stays", "sits", "gets")
                    else w for w in action.split())


def caption(objects: tuple[SceneObject, ...], background: str, rng: random.Random) -> str:
    """One caption from varied templates; always names every colour, shape and the motion."""
    with_size = rng.random() < 0.5
    nouns = [_noun(o, rng, with_size) for o in objects]
    plural = len(objects) > 1
    subject = f" {_JOIN} ".join(_ARTICLES[n[0] in "aeiou"] + " " + n for n in nouns)
    motion = objects[0].motion
    if motion in DIRECTIONS:
        verb = rng.choice(_VERBS)
        verb = _plural_verb(verb) if plural else verb  # "move" / "moves"
        action = f"{verb} {rng.choice(_DIR_WORDS[motion])}"
    else:
        action = rng.choice(_OTHER_PHRASES[motion])
        if plural:
            action = _plural_phrase(action)
    bg = rng.choice(BACKGROUNDS[background][1])
    template = TEMPLATES[rng.randrange(len(TEMPLATES))]
    return template.format(subject=subject, action=action, bg=bg)


def caption_words() -> dict[str, frozenset[str]]:
    """Every word a caption can contain, by role: "colour" (object colours), "size", "shape",
    "background" (background names), "other" (motions, templates, articles); lower case."""
    def words(phrases) -> frozenset[str]:
        return frozenset(w for p in phrases for w in p.replace(",", " ").split())

    actions = [*_VERBS, *map(_plural_verb, _VERBS), *(p for ps in _DIR_WORDS.values() for p in ps),
               *(p for ps in _OTHER_PHRASES.values() for p in ps),
               *(_plural_phrase(p) for ps in _OTHER_PHRASES.values() for p in ps)]
    templates = [t.format(subject="", action="", bg="") for t in TEMPLATES]
    return {"colour": words(COLOURS), "size": words(w for ws in _SIZE_WORDS.values() for w in ws),
            "shape": words(w for ws in SHAPES.values() for w in ws),
            "background": words(w for _, ws in BACKGROUNDS.values() for w in ws),
            "other": words([*actions, *templates, *_ARTICLES, _JOIN])}


def _track(o: SceneObject, frames: int, side: int) -> list[tuple[float, float, float]]:
    """(x px, y px, half-extent px) of an object in each frame."""
    half = SIZES[o.size] * side / 128
    x0, y0 = o.start[0] * side, o.start[1] * side
    dx, dy = DIRECTIONS.get(o.motion, (0, 0))
    out = []
    for i in range(frames):
        u = i / max(frames - 1, 1)
        x, y, h = x0 + dx * TRAVEL * side * u, y0 + dy * TRAVEL * side * u, half
        if o.motion == "bounce":  # two hops, back on the floor at the end
            y = y0 - TRAVEL * side * abs(math.sin(2 * math.pi * u))
        elif o.motion == "grow":
            h = half * (1 + 0.8 * u)
        elif o.motion == "shrink":
            h = half * (1.8 - 0.8 * u)
        out.append((x, y, h))
    return out


def _alpha(shape: str, xx: np.ndarray, yy: np.ndarray, x: float, y: float, h: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (positive inside)."""
    dx, dy = xx - x, yy - y
    if shape == "circle":
        sd = h - np.sqrt(dx * dx + dy * dy)
    elif shape == "square":
        sd = h * 0.9 - np.maximum(np.abs(dx), np.abs(dy))
    elif shape == "diamond":
        sd = (h * 1.2 - (np.abs(dx) + np.abs(dy))) / math.sqrt(2)
    else:  # equilateral triangle pointing up: three half-planes around the centroid
        s3 = math.sqrt(3)
        r = h * 0.62  # inradius
        normals = ((0.0, 1.0), (s3 / 2, -0.5), (-s3 / 2, -0.5))
        sd = np.min(np.stack([r - (dx * a + dy * b) for a, b in normals]), axis=0)
    return np.clip(sd + 0.5, 0.0, 1.0)


def render(scene: Scene, frames: int = 17, size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """uint8 video [T, H, W, 3] of the scene; (W, H) = size; later objects are drawn on top."""
    w, h = size
    side = min(w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    xx, yy = xx + (side - w) / 2, yy + (side - h) / 2  # centre a square layout in the frame
    bg = np.array(BACKGROUNDS[scene.background][0], dtype=np.float32)
    video = np.empty((frames, h, w, 3), dtype=np.float32)
    video[:] = bg
    tracks = [_track(o, frames, side) for o in scene.objects]
    for t in range(frames):
        for o, tr in zip(scene.objects, tracks):
            a = _alpha(o.shape, xx, yy, *tr[t])[..., None]  # [H, W, 1]
            video[t] = video[t] * (1 - a) + a * np.array(COLOURS[o.colour], dtype=np.float32)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def to_tensor(frames: np.ndarray):
    """uint8 [T, H, W, 3] -> float32 torch tensor [3, T, H, W] in [-1, 1] (the VAE's input)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).contiguous()


def training_scenes(n: int, seed: int = 0) -> list[Scene]:
    """n training scenes (held-out triples never appear)."""
    return [sample_scene(seed * 1_000_003 + i) for i in range(n)]


def held_out_scenes(n: int, seed: int = 12345, num_objects: int | None = 1) -> list[Scene]:
    """n evaluation scenes whose first object is a held-out triple, cycling over all triples."""
    triples = held_out_triples()
    out = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        colour, shape, motion = triples[i % len(triples)]
        size = rng.choice(list(SIZES))
        spread = num_objects == 2
        obj = SceneObject(shape, colour, size, motion, _start_for(motion, SIZES[size], rng, spread))
        objs = (obj,)
        if num_objects == 2:
            second = None
            while second is None:  # shrink the first object until a second one fits
                second = _second_object(obj, rng)
                obj = second and obj or SceneObject(shape, colour, "small", motion,
                                                    _start_for(motion, SIZES["small"], rng, spread))
            objs = (obj, second)
        bg = rng.choice(backgrounds_for(o.colour for o in objs))
        out.append(Scene(objs, bg, caption(objs, bg, rng)))
    return out
