"""Pre-flight checks of a generation request, run after the headers are read and before any weight.

* `check_distinct_experts`: `--high` and `--low` naming the same file is refused (the two
  experts of A14B are different networks; one file twice silently runs half the model wrong).
* `request_memory` / `check_memory`: a lower bound of the memory a request needs whatever the
  weights (latents and solver state, the DiT's token activations, the decoded video) against the
  memory of the device that holds it. A request that cannot fit (`--size 100000*100000`) is
  refused in one line with the numbers instead of dying in the allocator after minutes of
  loading. It is a floor, not a plan: a request that passes can still run out of memory (the
  full planner lives in runtime/memory).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .configs import ModelPreset
from .errors import InputError

MAX_PROMPT_CHARS = 100_000  # far past the encoder's 512 tokens; longer input is a mistake
SOLVER_COPIES = 5  # sample, model output, noise and two history slots of the multistep solvers


def check_distinct_experts(experts: dict[str, Path]) -> None:
    """Two experts given as the same file (or shard folder) are refused with the reason."""
    if len(experts) != 2:
        return
    (ra, a), (rb, b) = experts.items()
    try:
        same = Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return  # a missing file is reported by the loader, naming it
    if same:
        raise InputError(f"the {ra.replace('_', ' ')} and {rb.replace('_', ' ')} experts are the same "
                         f"file ({a}); Wan2.2 A14B has two different experts (high noise for early "
                         "steps, low noise for late ones): pass each expert's own file")


def check_prompts(prompt, negative_prompt, text_len: int) -> None:
    """Prompts are strings of a sane length (the Python API gets whatever the caller passes)."""
    for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"{label} must be a string, not {type(text).__name__}")
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"{label} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS} "
                             f"(the encoder reads only {text_len} tokens)")


def _fmt(n: int) -> str:
    for unit, k in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def request_memory(preset: ModelPreset, width: int, height: int, frames: int,
                   dtype: torch.dtype, batched_cfg: bool = False) -> dict[str, int]:
    """Lower bounds (bytes) per part of a request on the compute device; weights not included."""
    st, sh, sw = preset.vae.stride
    f_lat, h_lat, w_lat = (frames - 1) // st + 1, height // sh, width // sw
    pt, ph, pw = preset.dit.patch_size
    tokens = (f_lat // pt) * (h_lat // ph) * (w_lat // pw)
    batch = 2 if batched_cfg else 1
    item = torch.empty((), dtype=dtype).element_size()
    d = preset.dit
    return {
        "latents": SOLVER_COPIES * preset.vae.z_dim * f_lat * h_lat * w_lat * 4,
        # fp32 residual stream + q, k, v + the FFN hidden layer of one block, per CFG branch
        "activations": batch * tokens * (4 * d.dim + item * (3 * d.dim + d.ffn_dim)),
        # the decoded float32 video [3, T, H, W] and one full-resolution decoder feature frame
        "decode": 4 * (3 * frames + preset.vae.dec_dim) * height * width,
    }


def device_memory(device: torch.device) -> tuple[int, str]:
    """(total bytes, label) of the memory that holds a request on `device`."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name} ({device})"
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0, "host memory"
    return int(total), "host memory"


def check_memory(preset: ModelPreset, width: int, height: int, frames: int, device: torch.device,
                 dtype: torch.dtype, batched_cfg: bool = False) -> dict[str, int]:
    """InputError (with the numbers) when a request cannot fit however it is run."""
    need = request_memory(preset, width, height, frames, dtype, batched_cfg)
    have, where = device_memory(device)
    total = sum(need.values())
    if have and total > have:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in need.items())
        raise InputError(f"size {width}*{height} with {frames} frames needs at least {_fmt(total)} "
                         f"({parts}; weights not counted) but {where} has {_fmt(have)}; use a smaller "
                         f"--size or fewer --frames (official {preset.size[0]}*{preset.size[1]}, "
                         f"{preset.frames} frames)")
    return need
