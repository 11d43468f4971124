"""Pixel-analysis scorer: ~100 % on ground-truth clips, and it notices wrong colour/motion."""

import zlib

import numpy as np

from wanmoe.demo import clips as C
from wanmoe.demo import evaluate as E


def test_ground_truth_held_out_clips_score_full_marks():
    scenes = C.held_out_scenes(len(C.held_out_triples()))
    _, hits, _ = E.run(scenes, C.render)
    acc = E.summarise(hits)
    assert acc == {"colour": 1.0, "direction": 1.0, "motion": 1.0, "count": 1.0, "background": 1.0}


def test_ground_truth_two_object_clips():
    scenes = C.held_out_scenes(16, num_objects=2)
    _, hits, _ = E.run(scenes, C.render)
    acc = E.summarise(hits)
    assert acc["colour"] == 1.0 and acc["count"] == 1.0 and acc["direction"] == 1.0


def test_scorer_detects_wrong_direction_and_colour():
    o = C.SceneObject("circle", "red", "medium", "right", (0.2, 0.5))
    scene = C.Scene((o,), "black", "a red circle moves to the right")
    flipped = C.render(scene)[:, :, ::-1]  # mirror: the circle now moves left
    h = E.score(scene, E.analyse(np.ascontiguousarray(flipped)))
    assert h["direction"] is False and h["colour"] is True
    blue = C.Scene((C.SceneObject("circle", "blue", "medium", "right", (0.2, 0.5)),), "black", "")
    h = E.score(scene, E.analyse(C.render(blue)))
    assert h["colour"] is False and h["direction"] is True
    noise = np.random.default_rng(0).integers(0, 255, (17, 128, 128, 3), dtype=np.uint8)
    h = E.score(scene, E.analyse(noise))
    assert not (h["colour"] and h["direction"])


def test_format_table_prints_accuracies():
    scenes = C.held_out_scenes(3)
    a, h, _ = E.run(scenes, C.render)
    text = E.format_table(scenes, a, h)
    assert "colour accuracy: 100.0 %" in text and scenes[0].caption in text


def test_png_writer_round_trip(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (7, 5, 3), dtype=np.uint8)
    E.write_png(img, tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data.index(b"IDAT")
    n = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + n])
    rows = np.frombuffer(raw, np.uint8).reshape(7, 1 + 5 * 3)
    assert (rows[:, 0] == 0).all() and np.array_equal(rows[:, 1:].reshape(7, 5, 3), img)


def test_scorer_on_every_light_background_an_object_may_be_drawn_on(monkeypatch):
    monkeypatch.setattr(C, "BACKGROUNDS", {**C.BACKGROUNDS, **C.LIGHT_BACKGROUNDS})
    monkeypatch.setattr(E, "BACKGROUNDS", C.BACKGROUNDS)
    light = [b for b in C.BACKGROUNDS if C.is_light(b)]
    assert {"white", "light gray", "sky blue", "beige"} <= set(light)
    n = 0
    for b in light:
        for colour in C.COLOURS:
            if b not in C.backgrounds_for([colour]):
                continue
            o = C.SceneObject("square", colour, "small", "down-left", (0.7, 0.3))
            scene = C.Scene((o,), b, f"a {colour} square moves down and left on a background")
            h = E.score(scene, E.analyse(C.render(scene)))
            assert h == {"colour": True, "direction": True, "motion": True, "count": True,
                         "background": True}, (b, colour)
            n += 1
    assert n >= 30


def test_background_is_scored_only_when_the_caption_names_one():
    o = C.SceneObject("circle", "red", "medium", "right", (0.2, 0.5))
    video = C.render(C.Scene((o,), "black", ""))
    named = C.Scene((o,), "dark blue", "a red circle moves right on a dark blue background")
    assert E.analyse(video).background == "black"
    assert E.score(named, E.analyse(video))["background"] is False
    unnamed = C.Scene((o,), "black", "a red circle moves right")
    assert E.score(unnamed, E.analyse(video))["background"] is None


def test_cli_light_backgrounds_flag_scores_ground_truth(monkeypatch, capsys):
    both = dict(C.BACKGROUNDS)  # main() adds the light ones to this copy, restored afterwards
    monkeypatch.setattr(C, "BACKGROUNDS", both)
    monkeypatch.setattr(E, "BACKGROUNDS", both)
    assert E.main(["--n", "12", "--ground-truth", "--light-backgrounds"]) == 0
    out = capsys.readouterr().out
    assert "on light backgrounds (" in out and "background accuracy: 100.0 %" in out
    assert set(C.LIGHT_BACKGROUNDS) <= set(both)
