"""Shared training plumbing: EMA, resumable checkpoints, loss log, progress bar, thread count."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from wanmoe.errors import CheckpointError


class EMA:
    """Exponential moving average of a module's parameters (a frozen shadow copy)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up: short runs should not be dominated by the random init
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1 - d)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.shadow.load_state_dict(sd)


def set_threads(n: int | None) -> int:
    """Use n intra-op threads (default: min(2, cores)); returns the count."""
    n = n or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def save_state(path: Path, state: dict) -> None:
    """Atomically write a training state (model, ema, optimiser, step, ...) with torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    """The saved training state, or None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read training state {path}: {e}; delete it to restart") from e


class LossLog:
    """Appends one JSON line per logged step to `<dir>/<name>.jsonl` (survives resumes)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    def write(self, step: int, **values: float) -> None:
        row = {"step": step, "time_s": round(time.perf_counter() - self.t0, 2)}
        row |= {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def progress(total: int, initial: int, desc: str):
    """tqdm bar (falls back to a silent object with the same methods)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=2.0)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10 % of base."""
    import math

    if step < warmup:
        return base * (step + 1) / warmup
    u = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * u)))
