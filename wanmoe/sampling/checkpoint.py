"""Denoise checkpoints: save the sample and the solver's multistep state every K steps, resume
from the file, and end with exactly the latents of an uninterrupted run.

A checkpoint holds the sample x_i, the solver state after step i-1 (step index, x0 history,
the UniPC corrector's last sample and order), the experts used so far, and a fingerprint of
the request (model, prompt, values, seed, compute dtype, LoRAs). Resuming a different
request is refused: continuing someone else's latents would silently give a wrong video.

The file is a `torch.save` dict of tensors, ints and strings, read back with
`weights_only=True` (no pickled code runs), written atomically (temp file + rename) so a
crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from wanmoe.errors import InputError

FORMAT = "wanmoe-denoise-checkpoint"
VERSION = 1


def request_fingerprint(**parts) -> str:
    """SHA-256 of the parts that decide the latents (JSON, sorted keys; values str()-ed)."""
    text = json.dumps({k: str(v) for k, v in parts.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Checkpointing:
    """Where and how often to save, and what to resume from.

    `path`: the file written every `every` steps (0 = never). `resume`: a file to continue
    from (may be the same path). `fingerprint`: set by the pipeline from the request.
    """

    path: Optional[Path] = None
    every: int = 0
    resume: Optional[Path] = None
    fingerprint: str = ""
    seed: int = -1  # the request's seed, stored so that `--resume` alone can find it
    saved: list[int] = field(default_factory=list)  # steps done at each save (for inspection)

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise InputError(f"checkpoint_every {self.every!r} must be a whole number >= 0 "
                             f"(0 = no checkpoints)")
        if self.every > 0 and self.path is None:
            raise InputError("checkpoint_every is set but no checkpoint file was given")
        self.path = None if self.path is None else Path(self.path)
        self.resume = None if self.resume is None else Path(self.resume)
        if self.resume is not None and not self.resume.is_file():
            raise InputError(f"resume file {str(self.resume)!r} does not exist")

    @property
    def active(self) -> bool:
        return self.every > 0 or self.resume is not None

    # ---- saving ------------------------------------------------------------------------------
    def maybe_save(self, done: int, total: int, x: torch.Tensor, solver, experts: list[str]) -> None:
        """After `done` steps: save when done is a multiple of `every` and steps remain."""
        if self.every <= 0 or done % self.every != 0 or done >= total:
            return
        save(self.path, done, x, solver, experts, self.fingerprint, self.seed)
        self.saved.append(done)

    # ---- resuming ----------------------------------------------------------------------------
    def load(self, solver, shape: tuple[int, ...]) -> tuple[int, torch.Tensor, list[str]]:
        """(steps done, x, experts so far) from `resume`, with the solver state restored."""
        return load(self.resume, solver, shape, self.fingerprint)


def save(path, done: int, x: torch.Tensor, solver, experts: list[str], fingerprint: str,
         seed: int = -1) -> None:
    from wanmoe.outputs import atomic_path

    blob = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "step": int(done),
            "seed": int(seed),
            "steps": solver.num_steps, "solver_name": solver.name, "x": x.detach().cpu().clone(),
            "solver": solver.state_dict(), "experts": list(experts)}
    with atomic_path(Path(path)) as tmp:
        torch.save(blob, tmp)


def read(path) -> dict:
    """The checkpoint dict of `path` (validated format and version), tensors on the CPU."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file at all
        raise InputError(f"resume file {str(path)!r} is not a readable wanmoe checkpoint "
                         f"({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"resume file {str(path)!r} is not a wanmoe denoise checkpoint")
    if blob.get("version") != VERSION:
        raise InputError(f"resume file {str(path)!r} has checkpoint version "
                         f"{blob.get('version')!r}; this wanmoe reads version {VERSION}")
    return blob


def saved_seed(path) -> int:
    """The seed a checkpoint was saved with (so a resume without --seed uses it)."""
    seed = read(path).get("seed")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"resume file {str(path)!r} does not record its seed; pass --seed")
    return seed


def load(path, solver, shape, fingerprint: str) -> tuple[int, torch.Tensor, list[str]]:
    path = Path(path)
    blob = read(path)
    if blob.get("fingerprint") != fingerprint:
        raise InputError(f"resume file {str(path)!r} was saved for a different request (model, "
                         f"prompt, size, frames, steps, shift, guidance, solver, seed, dtype or "
                         f"LoRAs differ); run the same request to resume it")
    x = blob.get("x")
    step = blob.get("step")
    if (not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape)
            or not isinstance(step, int) or not 0 < step < solver.num_steps
            or blob.get("solver_name") != solver.name):
        raise InputError(f"resume file {str(path)!r} is inconsistent (shape, step or solver)")
    solver.load_state_dict(blob["solver"])
    if solver.step_index != step:
        raise InputError(f"resume file {str(path)!r} is inconsistent (solver at step "
                         f"{solver.step_index}, file at step {step})")
    experts = blob.get("experts")
    if not isinstance(experts, list) or len(experts) != step:
        raise InputError(f"resume file {str(path)!r} is inconsistent (expert list)")
    return step, x, [str(e) for e in experts]
