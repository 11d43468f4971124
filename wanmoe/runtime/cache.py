"""Step caching: skip whole DiT forwards by reusing the blocks' last residual (block-runner hook).

A skipped forward runs only the patch embedding, the time/text embeddings and the head; the
blocks' output is taken as `h + r`, where r = (blocks' output - input) of the last forward that
ran for the same expert and the same guidance pass. Two deciders:

* `mag[:THRESHOLD[:K]]` (MagCache, Ma et al. 2025): published per-step magnitude ratios of the
  residual (`runtime/cache_ratios.py`, T2V-A14B and TI2V-5B); the error of reusing a residual
  s steps old is estimated as the sum over those steps of |1 - prod(ratios)|; skip while it stays
  under THRESHOLD (default 0.04) and at most K (default 2) steps in a row.
* `easy[:THRESHOLD]` (EasyCache-style, runtime-adaptive, needs no calibration): the rate
  k = |o_i - o_j| / |x_i - x_j| between the last two computed forwards predicts the relative
  change of the output, k |x - x_c| / |o_c|, from the input's distance to the cached input
  x_c; skip while it stays under THRESHOLD (default 0.05), at most 2 steps in a row.

Never skipped: the first `retention` share (default 0.2) of each expert's steps (at least its
first step) and the last step of the run. Each expert and each guidance pass keeps its own
state; `off` installs nothing, so it is bit-identical to no cache.
Memory: per guidance pass one residual (mag) or a residual and an input (easy), [B, L, dim]
fp32 each: 1.5 GB per tensor at A14B 720P. The other expert's state is dropped at the switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wanmoe.errors import InputError
from wanmoe.runtime.cache_ratios import PUBLISHED

KINDS = ("off", "easy", "mag")
DEFAULTS = {"easy": 0.05, "mag": 0.04}


@dataclass(frozen=True)
class CacheSpec:
    """What `--cache` asked for (validated at the edge)."""

    kind: str = "off"
    threshold: float = 0.0
    max_skips: int = 2
    retention: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.kind != "off"


def parse_cache(text) -> CacheSpec:
    """'off' | 'easy[:THRESHOLD]' | 'mag[:THRESHOLD[:K]]' -> CacheSpec."""
    if isinstance(text, CacheSpec):
        return text
    parts = str(text).strip().lower().split(":")
    kind = parts[0]
    if kind not in KINDS or (kind == "off" and len(parts) > 1) or len(parts) > (3 if kind == "mag" else 2):
        raise InputError(f"cache {text!r} is not off, easy[:THRESHOLD] or mag[:THRESHOLD[:K]] "
                         f"(e.g. mag:0.06:2)")
    if kind == "off":
        return CacheSpec()
    try:
        threshold = float(parts[1]) if len(parts) > 1 else DEFAULTS[kind]
        k = int(parts[2]) if len(parts) > 2 else 2
    except ValueError:
        raise InputError(f"cache {text!r}: THRESHOLD must be a number and K a whole number") from None
    if not (math.isfinite(threshold) and threshold > 0) or k < 1:
        raise InputError(f"cache {text!r}: THRESHOLD must be > 0 and K >= 1")
    return CacheSpec(kind, threshold, k)


def _interp(ratios: list[tuple[float, float]], calibrated: int, steps: int) -> list[tuple[float, float]]:
    """Per-step ratios (step 0 = 1.0) resampled to `steps` by nearest index, as MagCache does."""
    full = [(1.0, 1.0)] + list(ratios)  # calibrated entries
    if steps == calibrated:
        return full
    if steps == 1:
        return [full[-1]]
    scale = (calibrated - 1) / (steps - 1)
    return [full[int(round(i * scale))] for i in range(steps)]


class StepCache:
    """Installed on the experts for one generation; `wrap(denoiser)` tells it the step."""

    def __init__(self, spec: CacheSpec, experts: dict, schedule, timesteps, preset_name: str) -> None:
        self.spec, self.experts = spec, experts
        self.plan = [schedule.select(t).expert for t in timesteps]  # expert per step
        n = len(self.plan)
        self.protected = set()
        for name in dict.fromkeys(self.plan):
            idx = [i for i, e in enumerate(self.plan) if e == name]
            self.protected.update(idx[: max(1, math.ceil(spec.retention * len(idx)))])
        self.protected.add(n - 1)
        self.ratios = None
        if spec.kind == "mag":
            if preset_name not in PUBLISHED:
                raise InputError(f"--cache mag needs published magnitude ratios, which exist for "
                                 f"{', '.join(PUBLISHED)}, not {preset_name}; use --cache easy")
            calibrated, ratios = PUBLISHED[preset_name]
            self.ratios = _interp(ratios, calibrated, n)
        self.step, self.branch, self.state = -1, 0, {}
        self.forwards = self.skipped = 0
        self.log: list[tuple[int, str, int, bool]] = []  # (step, expert, pass, skipped)
        self._previous = {name: m.block_runner for name, m in experts.items()}
        for name, model in experts.items():
            model.block_runner = self._runner(name, self._previous[name])

    def wrap(self, denoiser):
        """The denoiser with a step counter in front (one call per step)."""
        def call(stage, x, t):
            self.step += 1
            self.branch = 0
            for key in [k for k in self.state if k[0] != stage.expert]:
                del self.state[key]  # the other expert's state is never used again
            return denoiser(stage, x, t)
        return call

    def remove(self) -> dict:
        """Restore the experts' runners; returns {"forwards", "skipped"}."""
        for name, model in self.experts.items():
            model.block_runner = self._previous[name]
        self.state.clear()
        return {"forwards": self.forwards, "skipped": self.skipped}

    # ---- per forward ---------------------------------------------------------------------
    def _runner(self, name: str, inner):
        def run(blocks, h, *args):
            key, branch = (name, self.branch), self.branch
            self.branch += 1
            self.forwards += 1
            st = self.state.setdefault(key, {})
            if self.step not in self.protected and "residual" in st and self._skip(st, h, branch):
                self.skipped += 1
                st["skips"] += 1
                self.log.append((self.step, name, branch, True))
                return h + st["residual"]
            self.log.append((self.step, name, branch, False))
            out = inner(blocks, h, *args)
            self._computed(st, h, out)
            return out
        return run

    def _skip(self, st: dict, h: torch.Tensor, branch: int) -> bool:
        if st["skips"] >= self.spec.max_skips:
            return False
        if self.spec.kind == "mag":
            st["ratio"] *= self.ratios[self.step][min(branch, 1)]
            st["err"] += abs(1.0 - st["ratio"])
            return st["err"] < self.spec.threshold
        if st.get("rate") is None:
            return False
        change = st["rate"] * float((h.float() - st["x"]).norm()) / max(st["o_norm"], 1e-12)
        return change < self.spec.threshold

    def _computed(self, st: dict, h: torch.Tensor, out: torch.Tensor) -> None:
        residual = out.float() - h.float()
        if self.spec.kind == "easy":
            x = h.float()
            if "x" in st:  # |o - o_prev| / |x - x_prev| with o = x + residual
                dx = float((x - st["x"]).norm())
                do = float((x + residual - st["x"] - st["residual"]).norm())
                st["rate"] = do / dx if dx > 0 else None
            st["x"], st["o_norm"] = x, float((x + residual).norm())
        st.update(residual=residual, skips=0, ratio=1.0, err=0.0)
