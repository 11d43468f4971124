"""Validation of user input, run before any weights load.

Every check raises `InputError` naming the value, the rule and the allowed choices or the nearest
valid values. Nothing is silently rounded (house rule 7).
"""

from __future__ import annotations

import math
import random
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .configs import ModelPreset
from .errors import InputError
from .models.experts import boundary_from_snr
from .runtime.config import WeightMode
from .sampling import SOLVERS as _SOLVER_REGISTRY

SOLVERS = tuple(_SOLVER_REGISTRY)  # the one registry: wanmoe.sampling.SOLVERS
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
WEIGHT_MODES = tuple(m.value for m in WeightMode if m is not WeightMode.DEFAULT)
SEED_MAX = sys.maxsize  # the official random seed is drawn from [0, sys.maxsize]
MAX_FRAMES = 2001  # 25x the official 81; beyond this a request is a typo, not a video
MAX_STEPS = 1000  # the schedule has 1000 training timesteps
MAX_SIDE_DIGITS = 9


def _is_int(v) -> bool:
    """An int that is not a bool (`True` is an int to Python, not a frame count to a user)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _number(label: str, value) -> float:
    """float(value), with anything that is not a number (str, bool, None, list) an InputError."""
    if isinstance(value, bool):
        raise InputError(f"{label} {value!r} must be a number, not a bool")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{label} {value!r} is not a number") from None

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class GenerationRequest:
    """Validated generation values: every value filled in (preset default or user value)."""

    width: int
    height: int
    frames: int
    steps: int
    shift: float
    guide_scale: tuple[float, ...]  # one per expert, ordered high-noise -> low-noise
    boundary: float | None  # timestep fraction; None for a dense model
    solver: str
    seed: int  # never -1: a random seed is drawn at validation
    preset: "ModelPreset | None" = field(default=None, repr=False, compare=False)
    cfg_steps: int | None = None  # phased guidance: CFG on the first K steps only (None: all)

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @cached_property
    def schedule(self) -> "ExpertSchedule":
        """The expert schedule of this request (built once: boundary and guidance per expert)."""
        from .models.experts import ExpertSchedule

        if self.preset is None:
            raise InputError("this request was built without a model preset; build it with "
                             "wanmoe.validate.settings_for(preset, ...)")
        return ExpertSchedule.from_preset(self.preset, boundary=self.boundary,
                                          guidance=self.guide_scale)



# The old name of the validated request type, kept for the Python API.
Settings = GenerationRequest


def parse_size(text: str) -> tuple[int, int]:
    """'W*H' (official spelling) or 'WxH' -> (W, H)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise InputError(f"size {text!r} is not WIDTH*HEIGHT (e.g. 1280*720; 'x' works too)")
    if max(len(m.group(1)), len(m.group(2))) > MAX_SIDE_DIGITS:
        raise InputError(f"size {text!r} has a side of more than {MAX_SIDE_DIGITS} digits")
    return int(m.group(1)), int(m.group(2))


def _nearest_multiples(value: int, k: int) -> str:
    lo, hi = (value // k) * k, (value // k + 1) * k
    return f"use {lo} or {hi}" if lo > 0 else f"use {hi}"


def check_size(width: int, height: int, preset: ModelPreset) -> None:
    """Width and height must be positive multiples of the preset's VAE stride x patch."""
    k = preset.size_multiple
    for label, v in (("width", width), ("height", height)):
        if not _is_int(v) or v <= 0:
            raise InputError(f"{label} {v!r} must be a positive integer")
        if v % k:
            raise InputError(f"{label} {v} is not a multiple of {k}; {_nearest_multiples(v, k)} "
                             f"({preset.name}: VAE stride x patch size = {k})")


def check_frames(frames: int, t_stride: int = 4) -> None:
    """Pixel frame count must be k*n+1 (the VAE keeps frame 0 and compresses the rest by k=4)."""
    k = t_stride
    if not _is_int(frames) or frames < 1:
        raise InputError(f"frames {frames!r} must be an integer of the form {k}n+1 >= 1 "
                         f"(1, {k + 1}, {2 * k + 1}, ...)")
    if frames > MAX_FRAMES:
        raise InputError(f"frames {frames} is more than the limit of {MAX_FRAMES}")
    if (frames - 1) % k:
        lo = frames - (frames - 1) % k
        raise InputError(f"frames {frames} is not of the form {k}n+1; use {lo} or {lo + k}")


def check_steps(steps: int) -> None:
    if not _is_int(steps) or steps < 1:
        raise InputError(f"steps {steps!r} must be an integer >= 1")
    if steps > MAX_STEPS:
        raise InputError(f"steps {steps} is more than {MAX_STEPS}, the number of timesteps of the "
                         "noise schedule")


def check_cfg_steps(cfg_steps) -> int | None:
    """--cfg-steps K: None (CFG on every step) or a whole number >= 0."""
    if cfg_steps is not None and (not _is_int(cfg_steps) or cfg_steps < 0):
        raise InputError(f"cfg steps {cfg_steps!r} must be a whole number >= 0 (the first K steps "
                         f"use CFG, the rest guidance 1)")
    return cfg_steps


def check_shift(shift: float) -> None:
    if not math.isfinite(_number("shift", shift)) or float(shift) <= 0:
        raise InputError(f"shift {shift!r} must be a finite number > 0")


def parse_guide_scale(value, n_experts: int) -> tuple[float, ...]:
    """One value (used for every expert, as the official CLI does) or HIGH,LOW per expert."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"guide scale {value!r} is not a number or a comma-separated "
                             f"list of numbers (e.g. 4.0 or 4.0,3.0)") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        vals = [float(value)]
    elif isinstance(value, (list, tuple)):
        vals = [_number("guide scale", v) for v in value]
    else:
        raise InputError(f"guide scale {value!r} is not a number, a list of numbers or 'HIGH,LOW'")
    if len(vals) == 1:
        vals = vals * n_experts
    if len(vals) != n_experts:
        allowed = "one value or HIGH,LOW" if n_experts == 2 else "one value"
        raise InputError(f"guide scale {value!r} gives {len(vals)} values but the model has "
                         f"{n_experts} expert(s); give {allowed}")
    for v in vals:
        if not math.isfinite(v) or v < 0:
            raise InputError(f"guide scale {v} must be a finite number >= 0")
    return tuple(vals)


def check_boundary(boundary: float | None, boundary_snr: float | None,
                   preset: ModelPreset) -> float | None:
    """Resolve --boundary / --boundary-snr against the preset; None for dense models."""
    if boundary is not None and boundary_snr is not None:
        raise InputError("give either a boundary fraction or a boundary SNR, not both")
    if preset.boundary is None:
        if boundary is not None or boundary_snr is not None:
            raise InputError(f"{preset.name} is a single-expert model; a MoE boundary does not apply")
        return None
    if boundary_snr is not None:
        snr = _number("boundary SNR", boundary_snr)
        if not math.isfinite(snr) or snr <= 0:
            raise InputError(f"boundary SNR {boundary_snr!r} must be a finite number > 0")
        boundary = boundary_from_snr(snr)
    if boundary is None:
        return preset.boundary
    if not 0.0 < _number("boundary", boundary) < 1.0:
        raise InputError(f"boundary {boundary!r} must lie strictly between 0 and 1 "
                         f"(official {preset.boundary})")
    return float(boundary)


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise InputError(f"solver {name!r} is not one of {', '.join(SOLVERS)}")
    return name


def resolve_seed(seed: int | None) -> int:
    """-1 / None -> a random seed in [0, sys.maxsize] (official rule); else checked."""
    if seed is None or (_is_int(seed) and seed == -1):
        return random.SystemRandom().randint(0, SEED_MAX)
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed {seed!r} must be -1 (random) or an integer in [0, {SEED_MAX}]")
    return seed


def parse_dtype(dtype) -> torch.dtype:
    """'bf16' | 'fp32' (or the torch dtype itself) -> torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")


def parse_vae_tile(text: str | None):
    """'H,W,OVERLAP' in latent pixels -> `vae.tiling.TileSpec` (None: untiled)."""
    if text is None:
        return None
    from .vae.tiling import TileSpec

    parts = [x.strip() for x in str(text).split(",")]
    if len(parts) != 3 or not all(x.isdigit() for x in parts):
        raise InputError(f"--vae-tile {text!r} is not H,W,OVERLAP (three whole numbers of latent "
                         "pixels, e.g. 45,80,8)")
    return TileSpec(*(int(x) for x in parts))


def check_weights(mode: str | None) -> str | None:
    if mode is not None and mode not in WEIGHT_MODES:
        raise InputError(f"weights {mode!r} is not one of {', '.join(WEIGHT_MODES)}")
    return mode


def parse_device(device) -> torch.device:
    """Device string -> torch.device, refusing devices this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a device name (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available on this "
                             f"machine (torch {torch.__version__}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {device!r} does not exist; this machine has cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"device {device!r} requested but MPS is not available")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r} is not supported; use cpu or cuda[:N]")
    return dev


def settings_for(preset: ModelPreset, *, size=None, frames=None, steps=None, shift=None,
                 guide_scale=None, boundary=None, boundary_snr=None, solver="unipc",
                 seed=-1, cfg_steps=None) -> Settings:
    """Fill preset defaults into the user's values and check every one (no weights needed)."""
    if size is None:
        width, height = preset.size
    elif isinstance(size, str):
        width, height = parse_size(size)
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        width, height = size  # check_size refuses anything but positive ints (no rounding)
    else:
        raise InputError(f"size {size!r} must be 'WIDTH*HEIGHT' or a (width, height) pair of ints")
    check_size(width, height, preset)
    frames = preset.frames if frames is None else frames
    check_frames(frames, preset.vae.stride[0])
    steps = preset.steps if steps is None else steps
    check_steps(steps)
    shift = preset.shift if shift is None else _number("shift", shift)
    check_shift(shift)
    if guide_scale is None:
        scales = tuple(e.guidance for e in preset.experts)
    else:
        scales = parse_guide_scale(guide_scale, len(preset.experts))
    b = check_boundary(boundary, boundary_snr, preset)
    check_cfg_steps(cfg_steps)
    return GenerationRequest(width=width, height=height, frames=frames, steps=steps, shift=shift,
                             guide_scale=scales, boundary=b, solver=check_solver(solver),
                             seed=resolve_seed(seed), preset=preset, cfg_steps=cfg_steps)
