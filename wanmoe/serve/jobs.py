"""A job request: JSON body -> a validated, normalised request dict (the server's edge).

The rules are the CLI's, called, not copied: `wanmoe.request.sampling_values` (presets),
`wanmoe.validate.settings_for` (size, frames, steps, shift, guide scale, solver, seed),
`wanmoe.preflight.check_prompts` / `check_memory`, and `wanmoe.plan.memory_preflight` on CUDA.
What is added here is what only a server needs: unknown fields, JSON types the CLI's parser
never produces, the server's caps (`Limits`), and LoRA names resolved inside `--lora-dir` (a
client never names a path on the server). Every refusal is an `InputError` with one line that
names the field; the HTTP layer answers it with 422.

The normalised request holds every value filled in (`size` as "W*H", `guide_scale` as a list,
the seed drawn), so running it again later (after a restart) gives the same video.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError

FIELDS = ("prompt", "negative_prompt", "size", "frames", "steps", "shift", "guide_scale", "solver",
          "seed", "preset", "loras")
_LORA_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")  # a file name, never a path


@dataclass(frozen=True)
class Limits:
    """Caps of one server, shown in GET /v1/model. Defaults: the CLI's own limits
    (`wanmoe.preflight.MAX_PROMPT_CHARS`, `wanmoe.validate.MAX_FRAMES` / `MAX_STEPS`);
    max_pixels: width*height (None: only the memory pre-flight limits it)."""

    prompt_chars: int
    max_frames: int
    max_steps: int
    max_pixels: int | None
    queue: int
    size_multiple: int = 16

    def as_dict(self) -> dict:
        return asdict(self)


def default_limits(preset, queue: int, *, max_frames=None, max_steps=None, max_pixels=None) -> Limits:
    from ..preflight import MAX_PROMPT_CHARS
    from ..validate import MAX_FRAMES, MAX_STEPS

    for flag, v in (("--max-frames", max_frames), ("--max-steps", max_steps),
                    ("--max-pixels", max_pixels), ("--queue-size", queue)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise InputError(f"{flag} {v!r} must be a whole number >= 1")
    return Limits(prompt_chars=MAX_PROMPT_CHARS,
                  max_frames=min(MAX_FRAMES, max_frames or MAX_FRAMES),
                  max_steps=min(MAX_STEPS, max_steps or MAX_STEPS),
                  max_pixels=max_pixels, queue=queue, size_multiple=preset.size_multiple)


@dataclass
class LoraSetup:
    """Per-job LoRAs: names of files in `folder`, on top of the server's own (`base`, per
    expert name). The pipeline must be loaded with runtime LoRAs (`--lora-mode runtime`)."""

    folder: Path
    base: dict = field(default_factory=dict)  # expert name -> [(file, strength)]
    _current: object = None

    def resolve(self, items, preset) -> list[dict]:
        """The request's "loras" -> [{"name", "strength", "expert"}], each file checked."""
        from ..request import parse_lora_arg

        if not isinstance(items, list):
            raise InputError(f"loras {items!r} must be a list of 'NAME[:STRENGTH]' strings or "
                             '{"name", "strength", "expert"} objects')
        two = len(preset.experts) == 2
        out = []
        for i, item in enumerate(items):
            label = f"loras[{i}]"
            if isinstance(item, str):
                name, sep, s = item.rpartition(":")
                name, strength, expert = (name, s, "both") if sep else (item, 1.0, "both")
            elif isinstance(item, dict):
                extra = set(item) - {"name", "strength", "expert"}
                if extra:
                    raise InputError(f"{label} has unknown key(s) {sorted(extra)}; "
                                     "allowed: name, strength, expert")
                name, strength = item.get("name"), item.get("strength", 1.0)
                expert = item.get("expert", "both")
            else:
                raise InputError(f"{label} {item!r} must be 'NAME[:STRENGTH]' or an object")
            if not isinstance(name, str) or not _LORA_NAME.match(name):
                raise InputError(f"{label}: name {name!r} must be the file name of a LoRA in the "
                                 "server's LoRA folder (letters, digits, _ . + -; no path)")
            if expert not in (("both", "high", "low") if two else ("both",)):
                raise InputError(f"{label}: expert {expert!r} is not one of "
                                 f"{'both, high, low' if two else 'both'}")
            path, value = parse_lora_arg(f"{self.folder / name}:{strength}", label)
            if Path(path).resolve().parent != self.folder.resolve():
                raise InputError(f"{label}: {name!r} is not a file in the server's LoRA folder")
            out.append({"name": name, "strength": value, "expert": expert})
        return out

    def apply(self, pipe, loras: list[dict]) -> None:
        """Set the pipeline's LoRAs to base + the job's (skipped when they already are)."""
        key = repr(sorted((x["name"], x["strength"], x["expert"]) for x in loras))
        if key == self._current:
            return
        names = [e.name for e in pipe.preset.experts]
        both = [(str(self.folder / x["name"]), x["strength"]) for x in loras if x["expert"] == "both"]
        high = [(str(self.folder / x["name"]), x["strength"]) for x in loras if x["expert"] == "high"]
        low = [(str(self.folder / x["name"]), x["strength"]) for x in loras if x["expert"] == "low"]
        if len(names) == 2:
            high = list(self.base.get(names[0], [])) + high
            low = list(self.base.get(names[1], [])) + low
        else:
            both = list(self.base.get(names[0], [])) + both
        pipe.set_loras(high=high, low=low, both=both)
        self._current = key


def parse_body(raw: bytes) -> dict:
    import json

    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"body is not valid JSON ({' '.join(str(e).split())})", None) from None
    if not isinstance(body, dict):
        raise RequestError('body must be a JSON object such as {"prompt": "a red ball rolls"}', None)
    return body


def _json_number(label: str, value):
    """JSON numbers only (the CLI's parser never hands over a bool or a string number)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{label} {value!r} must be a finite JSON number")
    return value


class RequestError(InputError):
    """A refused job body: one line starting with the JSON field it is about (`field`)."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


# the first words of the CLI's messages -> the JSON field they are about
_PREFIXES = (("negative prompt", "negative_prompt"), ("prompt", "prompt"), ("size", "size"),
             ("width", "size"), ("height", "size"), ("frames", "frames"), ("steps", "steps"),
             ("shift", "shift"), ("guide scale", "guide_scale"), ("guide_scale", "guide_scale"),
             ("solver", "solver"), ("seed", "seed"), ("preset", "preset"), ("loras", "loras"))


def _field_error(e: InputError) -> RequestError:
    text = " ".join(str(e).split())
    if isinstance(e, RequestError):
        return e
    field = next((f for p, f in _PREFIXES if text.startswith(p)), None)
    if field is None or text.startswith(field):
        return RequestError(text, field)
    return RequestError(f"{field}: {text}", field)


def normalise(body: dict, preset, limits: Limits, **kw) -> tuple[dict, list[str]]:
    """Validate a job body -> (normalised request, warnings). Raises `RequestError` (an
    InputError: one line that starts with the JSON field's name, e.g. "size: width 100 is not
    a multiple of 32; use 96 or 128 ...")."""
    try:
        return _normalise(body, preset, limits, **kw)
    except InputError as e:
        raise _field_error(e) from None


def _normalise(body: dict, preset, limits: Limits, *, devices=(), dtype=None, presets=(),
               loras: LoraSetup | None = None) -> tuple[dict, list[str]]:
    from ..preflight import check_memory, check_prompts
    from ..request import sampling_values
    from ..validate import settings_for

    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field; the fields are {', '.join(FIELDS)}",
                           unknown[0])
    if "prompt" not in body or body["prompt"] is None:
        raise InputError("prompt is required: describe the video to generate")
    prompt, negative = body["prompt"], body.get("negative_prompt")
    check_prompts(prompt, negative, preset.t5.text_len)
    if limits.prompt_chars and len(prompt) > limits.prompt_chars:
        raise InputError(f"prompt has {len(prompt)} characters; the limit is {limits.prompt_chars}")
    if not prompt.strip():
        raise InputError("prompt is empty; describe the video to generate")
    name = body.get("preset")
    if name is not None and name not in presets:
        usable = ", ".join(presets) or "none"
        raise InputError(f"preset {name!r} is not usable on this server (usable: {usable}; "
                         "lightning needs the server started with a Lightning LoRA pair)")
    for key in ("steps", "frames", "seed"):  # ints: settings_for refuses floats and bools
        if key in body and body[key] is not None and not isinstance(body[key], int):
            raise InputError(f"{key} {body[key]!r} must be a whole JSON number")
    shift = _json_number("shift", body.get("shift"))
    guide = body.get("guide_scale")
    if guide is not None and not isinstance(guide, (list, int, float)) or isinstance(guide, bool):
        raise InputError(f"guide_scale {guide!r} must be a number or a list [high, low]")
    solver = body.get("solver")
    if solver is not None and not isinstance(solver, str):
        raise InputError(f"solver {solver!r} must be a string")
    size = body.get("size")
    if size is not None and not isinstance(size, str):
        raise InputError(f"size {size!r} must be a string 'WIDTH*HEIGHT' such as '1280*720'")
    values = sampling_values(name, steps=body.get("steps"), shift=shift, guide_scale=guide,
                             solver=solver)
    seed = body.get("seed")
    s = settings_for(preset, size=size, frames=body.get("frames"),
                     seed=-1 if seed is None else seed, **values)
    if s.frames > limits.max_frames:
        raise InputError(f"frames {s.frames} is more than this server's limit of {limits.max_frames}")
    if s.steps > limits.max_steps:
        raise InputError(f"steps {s.steps} is more than this server's limit of {limits.max_steps}")
    if limits.max_pixels and s.width * s.height > limits.max_pixels:
        raise InputError(f"size {s.width}*{s.height} has {s.width * s.height} pixels; this server's "
                         f"limit is {limits.max_pixels}")
    for device in devices:
        check_memory(preset, s.width, s.height, s.frames, device, dtype)
    lora_items = body.get("loras") or []
    if lora_items and loras is None:
        raise InputError("loras: this server takes no per-job LoRAs (start it with --lora-dir DIR "
                         "--lora-mode runtime)")
    request = {"prompt": prompt, "negative_prompt": negative, "size": f"{s.width}*{s.height}",
               "frames": s.frames, "steps": s.steps, "shift": s.shift,
               "guide_scale": list(s.guide_scale), "solver": s.solver, "seed": s.seed,
               "preset": name, "loras": loras.resolve(lora_items, preset) if lora_items else []}
    return request, prompt_warnings(prompt, preset)


def is_demo(preset) -> bool:
    return preset.name in ("demo", "demo-dense")


def _vocabulary_module():
    try:
        from ..demo import vocabulary
    except ImportError:
        return None
    return vocabulary


def prompt_warnings(prompt: str, preset) -> list[str]:
    """Words of the prompt the demo model does not know (they are ignored by it)."""
    mod = _vocabulary_module() if is_demo(preset) else None
    if mod is None or not hasattr(mod, "unknown_words"):
        return []
    words = mod.unknown_words(prompt)
    if not words:
        return []
    return [f"the demo model does not know the word(s) {', '.join(words)}; they do not change "
            "the video (GET /v1/model lists the words it knows)"]


def demo_vocabulary(preset) -> list[str] | None:
    """The words the demo model knows, or None (not the demo model / no vocabulary module)."""
    mod = _vocabulary_module() if is_demo(preset) else None
    if mod is None:
        return None
    for attr in ("known_words", "vocabulary", "KNOWN_WORDS", "VOCABULARY", "WORDS"):
        value = getattr(mod, attr, None)
        if callable(value):
            value = value()
        if value:
            return sorted({str(w) for w in value})
    return None


__all__ = ["FIELDS", "Limits", "LoraSetup", "RequestError", "default_limits", "demo_vocabulary", "is_demo",
           "normalise", "parse_body", "prompt_warnings"]
