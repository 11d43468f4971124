"""Job bodies -> normalised requests: the CLI's rules through the server's edge (no model loaded)."""

import pytest

from wanmoe.demo.preset import DEMO
from wanmoe.errors import InputError
from wanmoe.serve.jobs import FIELDS, LoraSetup, RequestError, default_limits, normalise, parse_body
from wanmoe.validate import settings_for

LIMITS = default_limits(DEMO, 10, max_pixels=4 * 128 * 128)


def test_defaults_are_filled_in_like_the_cli():
    req, warnings = normalise({"prompt": "a red ball", "seed": 3}, DEMO, LIMITS)
    ref = settings_for(DEMO, seed=3)  # what `wanmoe generate` uses for unset flags
    assert req == {"prompt": "a red ball", "negative_prompt": None,
                   "size": f"{ref.width}*{ref.height}", "frames": ref.frames, "steps": ref.steps,
                   "shift": ref.shift, "guide_scale": list(ref.guide_scale), "solver": "unipc",
                   "seed": 3, "preset": None, "loras": []}
    assert set(req) == set(FIELDS)
    assert isinstance(warnings, list)


def test_random_seed_is_drawn_once_and_stored():
    a, _ = normalise({"prompt": "a red ball"}, DEMO, LIMITS)
    b, _ = normalise({"prompt": "a red ball", "seed": -1}, DEMO, LIMITS)
    assert 0 <= a["seed"] and 0 <= b["seed"] and a["seed"] != b["seed"]


def test_guide_scale_pair_and_preset():
    req, _ = normalise({"prompt": "x", "guide_scale": [5, 2.5], "size": "64*96"}, DEMO, LIMITS)
    assert req["guide_scale"] == [5.0, 2.5] and req["size"] == "64*96"
    req, _ = normalise({"prompt": "x", "preset": "lightning", "steps": 6}, DEMO, LIMITS,
                       presets=["lightning"])
    assert req["solver"] == "euler-lightning" and req["steps"] == 6  # given values win
    assert req["guide_scale"] == [1.0, 1.0] and req["preset"] == "lightning"


@pytest.mark.parametrize("body, field, words", [
    ({"prompt": "x", "frames": 10_001}, "frames", "limit"),
    ({"prompt": "x", "steps": 5000}, "steps", "1000"),
    ({"prompt": "x", "size": "512*512"}, "size", "pixels"),
    ({"prompt": "x", "size": [64, 64]}, "size", "string"),
    ({"prompt": "x", "guide_scale": True}, "guide_scale", "number"),
    ({"prompt": "x", "shift": float("nan")}, "shift", "finite"),
    ({"prompt": "x", "solver": ["unipc"]}, "solver", "string"),
    ({"prompt": "x", "seed": 2**70}, "seed", "integer"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": None}, "prompt", "required"),
    ({"prompt": "x", "preset": "turbo"}, "preset", "usable"),
    ({"prompt": "x", "Prompt": "y"}, "Prompt", "unknown field"),
])
def test_refusals_start_with_the_field(body, field, words):
    with pytest.raises(RequestError) as e:
        normalise(body, DEMO, LIMITS)
    assert e.value.field == field and str(e.value).startswith(field)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, InputError)


def test_server_caps_are_below_the_cli_limits():
    small = default_limits(DEMO, 10, max_frames=9, max_steps=4, max_pixels=64 * 64)
    normalise({"prompt": "x", "frames": 9, "steps": 4, "size": "64*64"}, DEMO, small)
    for body in ({"frames": 13}, {"steps": 5}, {"size": "64*96"}):
        with pytest.raises(RequestError, match="this server's limit"):
            normalise({"prompt": "x", **body}, DEMO, small)
    with pytest.raises(InputError, match="--queue-size"):
        default_limits(DEMO, 0)


def test_parse_body():
    assert parse_body(b'{"prompt": "x"}') == {"prompt": "x"}
    for raw in (b"", b"[]", b'"x"', b"{", b"\xff"):
        with pytest.raises(RequestError, match="^body"):
            parse_body(raw)


def test_loras_only_name_files_in_the_lora_dir(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "style.safetensors").write_bytes(b"")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    setup = LoraSetup(folder)
    with pytest.raises(RequestError, match="^loras: this server takes no per-job LoRAs"):
        normalise({"prompt": "x", "loras": ["style.safetensors"]}, DEMO, LIMITS)
    req, _ = normalise({"prompt": "x", "loras": ["style.safetensors:0.5",
                                                 {"name": "style.safetensors", "expert": "low"}]},
                       DEMO, LIMITS, loras=setup)
    assert req["loras"] == [{"name": "style.safetensors", "strength": 0.5, "expert": "both"},
                            {"name": "style.safetensors", "strength": 1.0, "expert": "low"}]
    for bad in ("../outside.safetensors", "/etc/passwd", "missing.safetensors", ".hidden",
                "style.safetensors:x", {"name": "style.safetensors", "expert": "middle"},
                {"name": "style.safetensors", "path": "/"}, 5):
        with pytest.raises(RequestError) as e:
            normalise({"prompt": "x", "loras": [bad]}, DEMO, LIMITS, loras=setup)
        assert e.value.field == "loras", (bad, str(e.value))


def test_demo_vocabulary_warnings():
    vocabulary = pytest.importorskip("wanmoe.demo.vocabulary",
                                     reason="the demo vocabulary (branch vocab) is not merged yet")
    from wanmoe.serve.jobs import demo_vocabulary

    words = demo_vocabulary(DEMO)
    assert words and words == sorted(set(vocabulary.known_words()))
    _, warnings = normalise({"prompt": "a red ball zorbles"}, DEMO, LIMITS)
    assert len(warnings) == 1 and "zorbles" in warnings[0]
    known = " ".join(words[:3])
    assert normalise({"prompt": known}, DEMO, LIMITS)[1] == []
