"""The demo model's vocabulary: derived from the caption generator, and the unknown words of a
prompt (what `wanmoe generate` notes for the demo model)."""

import re

import pytest

from wanmoe.demo import clips as C
from wanmoe.demo.vocabulary import known_words, unknown_words, unknown_words_note


def _caption_word_set(n: int = 3000) -> set[str]:
    caps = [s.caption for s in C.training_scenes(n)]
    caps += [s.caption for s in C.held_out_scenes(60)]
    return {w for c in caps for w in re.findall(r"[a-z]+", c)}


def test_known_words_are_exactly_the_words_training_captions_use():
    assert known_words() == sorted(_caption_word_set())


def test_generated_captions_have_no_unknown_words():
    for i in range(300):
        s = C.sample_scene(i)
        assert unknown_words(s.caption) == [], s.caption
    for i in range(100):
        s = C.sample_scene(i, num_objects=2)
        assert unknown_words(s.caption) == [], s.caption


def test_the_shipped_demo_does_not_know_light_backgrounds():
    # the natural first prompt: "white" is a known object colour, not a known background
    assert unknown_words("a red ball on a white background") == ["white"]
    assert unknown_words("a red ball on a light gray background") == ["light"]
    assert unknown_words("a red ball on a sky blue background") == ["sky"]
    assert unknown_words("a red ball on a beige backdrop") == ["beige"]


def test_white_background_is_unknown_until_the_generator_draws_it(monkeypatch):
    # "white" is an object colour, so it is a known word, but not a known background
    assert "white" in known_words()
    monkeypatch.delitem(C.BACKGROUNDS, "white", raising=False)
    assert unknown_words("a red ball on a white background") == ["white"]
    assert unknown_words("A white ball, on a WHITE backdrop.") == ["white"]
    monkeypatch.setitem(C.BACKGROUNDS, "white", ((240, 240, 240), ("white",)))
    assert unknown_words("a red ball on a white background") == []


def test_case_punctuation_and_function_words_are_ignored_new_words_reported_once():
    got = unknown_words("A RED ball -- moving LEFT, with the Sun; then moving again!")
    assert got == ["moving", "sun", "again"]


def test_words_in_a_role_they_were_never_trained_in():
    words = C.caption_words()
    bg_only = sorted(words["background"] - words["colour"])[0]  # e.g. "dark"
    assert bg_only not in C.COLOURS
    assert unknown_words(f"a {bg_only} red ball moves up") == [bg_only]
    assert unknown_words("a big red ball on a red background") == ["red"]
    assert unknown_words("a big red ball moves up on a dark blue background") == []
    assert unknown_words("a red ball on a background") == []


def test_non_latin_words_are_reported():
    assert unknown_words("一只红色的球") == ["一只红色的球"]


def test_note_line():
    assert unknown_words_note(["a red ball moves up"]) is None
    note = unknown_words_note(["a red ball moves up on a mauve background", "a mauve ball sways"])
    assert note == "note: the demo model does not know these words: mauve, sways"


@pytest.mark.parametrize("colours", [("white",), ("red", "white"), tuple(C.COLOURS)])
def test_backgrounds_for_keeps_the_contrast(colours):
    import math

    for b in C.backgrounds_for(colours):
        rgb = C.BACKGROUNDS[b][0]
        assert all(math.dist(rgb, C.COLOURS[c]) >= C.MIN_CONTRAST for c in colours)
    assert C.backgrounds_for(()) == list(C.BACKGROUNDS)
