"""Procedural demo clips: determinism, the held-out split, captions and rendering."""

import numpy as np

from wanmoe.demo import clips as C


def test_scenes_and_frames_are_deterministic_by_seed():
    a, b = C.sample_scene(123), C.sample_scene(123)
    assert a == b
    assert np.array_equal(C.render(a), C.render(b))
    assert C.sample_scene(124) != a


def test_training_scenes_never_contain_a_held_out_combination():
    scenes = C.training_scenes(600)
    seen = {(o.colour, o.shape, o.motion) for s in scenes for o in s.objects}
    assert not any(C.is_held_out(*t) for t in seen)
    # every single attribute value is still trained on (only combinations are held out)
    assert {t[0] for t in seen} == set(C.COLOURS)
    assert {t[1] for t in seen} == set(C.SHAPES)
    assert {t[2] for t in seen} == set(C.MOTIONS)
    assert any(len(s.objects) == 2 for s in scenes) and any(len(s.objects) == 1 for s in scenes)


def test_held_out_scenes_use_only_held_out_triples():
    triples = C.held_out_triples()
    assert len(triples) >= 50  # enough distinct combinations for the 50-prompt evaluation
    for s in C.held_out_scenes(len(triples)) + C.held_out_scenes(20, num_objects=2):
        o = s.objects[0]
        assert C.is_held_out(o.colour, o.shape, o.motion)


def test_issue_requirements_on_vocabulary():
    assert len(C.COLOURS) >= 8 and len(C.SHAPES) >= 3 and len(C.BACKGROUNDS) >= 3
    for m in ("left", "right", "up", "down", "up-left", "down-right", "bounce", "grow", "shrink", "still"):
        assert m in C.MOTIONS


def test_captions_name_colour_shape_and_vary():
    caps = set()
    for i in range(200):
        s = C.sample_scene(i)
        caps.add(s.caption)
        for o in s.objects:
            assert o.colour in s.caption
            assert any(w in s.caption for w in C.SHAPES[o.shape])
    # several templates: some captions lead with the background, some omit it
    assert any(c.startswith("on a") for c in caps) and any("background" not in c and "backdrop"
                                                           not in c for c in caps)


def test_render_shape_dtype_and_colours():
    s = C.sample_scene(5, num_objects=1)
    v = C.render(s, frames=17, size=(128, 128))
    assert v.shape == (17, 128, 128, 3) and v.dtype == np.uint8
    bg = np.array(C.BACKGROUNDS[s.background][0])
    assert np.array_equal(v[0, 0, 0], bg)
    want = np.array(C.COLOURS[s.objects[0].colour])
    assert (np.abs(v[8].reshape(-1, 3).astype(int) - want).sum(1) == 0).sum() > 50
    x = C.to_tensor(v)
    assert x.shape == (3, 17, 128, 128) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_translation_moves_by_the_travel_fraction():
    o = C.SceneObject("square", "red", "medium", "right", (0.2, 0.5))
    v = C.render(C.Scene((o,), "black", "x"))
    xs = [np.argwhere(f[..., 0] > 100)[:, 1].mean() for f in (v[0], v[-1])]
    assert abs((xs[1] - xs[0]) - C.TRAVEL * 128) < 1.0


def test_lone_object_starts_near_its_motions_canonical_start():
    """A lone object's track is centred in the frame, jittered by at most JITTER_ALONG along the
    motion and JITTER_ACROSS across it, so a caption pins down the direction of travel."""
    tol = 1e-9
    for i in range(400):
        s = C.sample_scene(i, num_objects=1)
        o = s.objects[0]
        x, y = o.start
        dx, dy = C.DIRECTIONS.get(o.motion, (0, 0))
        if o.motion == "bounce":
            assert abs(x - 0.5) <= C.JITTER_ACROSS + tol
            assert abs(y - (0.5 + C.TRAVEL / 2)) <= C.JITTER_ALONG + tol
            continue
        for pos, d in ((x, dx), (y, dy)):
            amp = C.JITTER_ALONG if d else C.JITTER_ACROSS
            assert abs(pos - (0.5 - d * C.TRAVEL / 2)) <= amp + tol, (s, pos)
    # rightward objects start in the left part of the frame and end in the right part
    right = [s.objects[0] for s in (C.sample_scene(i, num_objects=1) for i in range(400))
             if s.objects[0].motion == "right"]
    assert right and all(o.start[0] < 0.5 - C.TRAVEL / 2 + C.JITTER_ALONG + 1e-9 for o in right)


def test_every_object_stays_inside_the_frame_and_pairs_are_spread():
    scenes = C.training_scenes(600) + C.held_out_scenes(60) + C.held_out_scenes(20, num_objects=2)
    for s in scenes:
        for o in s.objects:
            for x, y, h in C._track(o, 17, 128):
                assert h <= x <= 128 - h and h <= y <= 128 - h, (s, x, y, h)
    # two-object scenes place objects anywhere their path fits (not at the canonical start)
    pairs = [s for s in scenes if len(s.objects) == 2]
    xs = [o.start[0] for s in pairs for o in s.objects if o.motion in ("up", "down", "still")]
    assert pairs and max(xs) - min(xs) > 2 * C.JITTER_ACROSS


def test_light_backgrounds_when_enabled_and_every_object_stands_out(monkeypatch):
    """The light backgrounds are out of the shipped training set; the fine-tune adds them, and
    then no object is drawn on a background it does not stand out from."""
    import math

    assert not set(C.LIGHT_BACKGROUNDS) & set(C.BACKGROUNDS)
    assert {"white", "light gray", "sky blue", "beige"} <= set(C.LIGHT_BACKGROUNDS)
    for name, (rgb, _) in C.BACKGROUNDS.items():  # every trained pair has the contrast
        assert all(math.dist(rgb, c) >= C.MIN_CONTRAST for c in C.COLOURS.values()), name
    monkeypatch.setattr(C, "BACKGROUNDS", {**C.BACKGROUNDS, **C.LIGHT_BACKGROUNDS})
    scenes = C.training_scenes(600)
    assert {s.background for s in scenes} == set(C.BACKGROUNDS)
    for s in scenes + C.held_out_scenes(60):
        bg = C.BACKGROUNDS[s.background][0]
        for o in s.objects:  # e.g. never a white ball on a white background
            assert math.dist(bg, C.COLOURS[o.colour]) >= C.MIN_CONTRAST, (s.caption, s.background)
    assert "white" not in C.backgrounds_for(["white"]) and "white" in C.backgrounds_for(["red"])
    assert any("white background" in s.caption or "white backdrop" in s.caption for s in scenes)
