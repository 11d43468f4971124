"""Which expert (and which guidance scale) runs at which noise level.

Wan2.2 T2V-A14B has two complete DiTs and no learned router: the integer model timestep t of a
step picks the expert, t >= boundary * num_train_timesteps -> high-noise expert (spec §3). This
module states that rule as data: an `ExpertSchedule` is an ordered tuple of `ExpertStage` noise
ranges [t_low, t_high) in model-timestep units, so dense models (one stage) and N-expert models
use the same loop.

Boundaries are timestep fractions (= the flow noise level σ at the switch, t = 1000·σ). They can
also be given as a signal-to-noise ratio: with x_σ = (1-σ)·x0 + σ·ε, SNR = ((1-σ)/σ)², so the
official 0.875 is SNR 1/49.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from wanmoe.errors import InputError

if TYPE_CHECKING:  # typing only: keep this module free of a configs import cycle
    from wanmoe.configs import ModelPreset


@dataclass(frozen=True)
class ExpertStage:
    """One expert over the model-timestep range t_low <= t < t_high, with its CFG scale."""

    expert: str
    t_low: float
    t_high: float  # math.inf for the highest-noise stage
    guidance: float

    def contains(self, t: float) -> bool:
        return self.t_low <= t < self.t_high


@dataclass(frozen=True)
class ExpertSchedule:
    """Stages ordered from high noise to low noise, covering [0, inf) without gaps or overlaps."""

    stages: tuple[ExpertStage, ...]

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        _validate(stages)

    # ------------------------------------------------------------------ lookup
    def select(self, t) -> ExpertStage:
        """Stage for the integer model timestep t (int, float or 1-element tensor)."""
        tv = _as_float(t)
        for stage in self.stages:
            if stage.contains(tv):
                return stage
        # unreachable after validation except for t < 0 or NaN
        raise InputError(f"timestep {tv} is outside the schedule's range [0, inf)")

    def split_counts(self, timesteps: Iterable) -> dict[str, int]:
        """Number of steps each expert gets for these model timesteps (every expert listed)."""
        counts = {s.expert: 0 for s in self.stages}
        for t in _iter_values(timesteps):
            counts[self.select(t).expert] += 1
        return counts

    @property
    def experts(self) -> tuple[str, ...]:
        """Expert names in stage order (high noise first), without repeats."""
        return tuple(dict.fromkeys(s.expert for s in self.stages))

    # ------------------------------------------------------------ constructors
    @classmethod
    def dense(cls, guidance: float, expert: str = "dense") -> "ExpertSchedule":
        """One expert for every timestep (TI2V-5B and any non-MoE model)."""
        return cls((ExpertStage(expert, 0.0, math.inf, _guidance(guidance)),))

    @classmethod
    def two_expert(cls, boundary: float, guidance_high: float, guidance_low: float,
                   num_train_timesteps: int = 1000,
                   names: Sequence[str] = ("high_noise", "low_noise")) -> "ExpertSchedule":
        """The Wan2.2 MoE rule: t >= boundary * num_train_timesteps -> names[0]."""
        if len(names) != 2:
            raise InputError(f"two_expert needs 2 expert names, got {list(names)}")
        return cls.from_boundaries(names, (boundary,), (guidance_high, guidance_low),
                                   num_train_timesteps)

    @classmethod
    def from_boundaries(cls, names: Sequence[str], boundaries: Sequence[float],
                        guidances: Sequence[float],
                        num_train_timesteps: int = 1000) -> "ExpertSchedule":
        """N experts, high noise first; boundaries are N-1 strictly decreasing fractions in (0, 1)."""
        names, boundaries, guidances = list(names), list(boundaries), list(guidances)
        if not names:
            raise InputError("an expert schedule needs at least one expert name")
        if len(boundaries) != len(names) - 1:
            raise InputError(f"{len(names)} experts {names} need {len(names) - 1} boundaries, "
                             f"got {len(boundaries)}: {boundaries}")
        if len(guidances) != len(names):
            raise InputError(f"{len(names)} experts {names} need {len(names)} guidance scales "
                             f"(high noise first), got {len(guidances)}: {guidances}")
        for b in boundaries:
            _check_boundary(b)
        if any(hi <= lo for hi, lo in zip(boundaries, boundaries[1:])):
            raise InputError(f"boundaries {boundaries} must be strictly decreasing "
                             f"(one per switch, high-noise expert first)")
        # Same float product as the official code (boundary * num_train_timesteps), so the
        # comparison t >= threshold is bit-for-bit the official one.
        edges = [math.inf] + [float(b) * num_train_timesteps for b in boundaries] + [0.0]
        stages = tuple(ExpertStage(n, edges[i + 1], edges[i], _guidance(g))
                       for i, (n, g) in enumerate(zip(names, guidances)))
        return cls(stages)

    @classmethod
    def from_preset(cls, preset: "ModelPreset", boundary: float | None = None,
                    guidance: float | Sequence[float] | None = None) -> "ExpertSchedule":
        """Schedule of a preset; `boundary` overrides its boundary, `guidance` its CFG scales.

        guidance None: each ExpertSpec.guidance; one float: every expert (the official CLI's
        `--sample_guide_scale`); a sequence: one per expert, high noise first.
        """
        names = [e.name for e in preset.experts]
        guidances = _resolve_guidance(preset, guidance)
        if len(names) == 1:
            if boundary is not None:
                raise InputError(f"boundary {boundary} given, but preset {preset.name!r} has a "
                                 f"single expert {names[0]!r}; a boundary needs 2+ experts")
            return cls.dense(guidances[0], expert=names[0])
        b = preset.boundary if boundary is None else boundary
        if b is None:
            raise InputError(f"preset {preset.name!r} has {len(names)} experts but no boundary")
        if len(names) != 2:
            raise InputError(f"preset {preset.name!r} has {len(names)} experts; a single "
                             f"boundary only splits 2 (use ExpertSchedule.from_boundaries)")
        return cls.two_expert(b, guidances[0], guidances[1], preset.num_train_timesteps,
                              names=names)


# ---------------------------------------------------------------------- SNR view
def snr_from_boundary(boundary: float) -> float:
    """SNR = ((1-σ)/σ)² of the boundary σ (timestep fraction); 0.875 -> 1/49."""
    _check_boundary(boundary)
    return ((1.0 - boundary) / boundary) ** 2


def boundary_from_snr(snr: float) -> float:
    """Inverse of `snr_from_boundary`: σ = 1 / (1 + sqrt(SNR)); 1/49 -> 0.875."""
    if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
        raise InputError(f"boundary SNR {snr!r} must be a finite number > 0 "
                         f"(e.g. 0.0204 = 1/49 for the official boundary 0.875)")
    return 1.0 / (1.0 + math.sqrt(snr))


# ---------------------------------------------------------------------- helpers
def _validate(stages: tuple) -> None:
    if not stages:
        raise InputError("an expert schedule needs at least one stage")
    for s in stages:
        if not isinstance(s, ExpertStage):
            raise InputError(f"schedule entry {s!r} is not an ExpertStage")
        if not isinstance(s.expert, str) or not s.expert:
            raise InputError(f"stage expert name {s.expert!r} must be a non-empty string")
        if not (s.t_low < s.t_high) or s.t_low < 0:
            raise InputError(f"stage {s.expert!r} has range [{s.t_low}, {s.t_high}); "
                             f"need 0 <= t_low < t_high")
    if stages[0].t_high != math.inf:
        raise InputError(f"the first (highest-noise) stage {stages[0].expert!r} must reach "
                         f"t_high=inf, got {stages[0].t_high}")
    if stages[-1].t_low != 0:
        raise InputError(f"the last (lowest-noise) stage {stages[-1].expert!r} must start at "
                         f"t_low=0, got {stages[-1].t_low}")
    for hi, lo in zip(stages, stages[1:]):
        if hi.t_low != lo.t_high:
            kind = "overlap" if lo.t_high > hi.t_low else "gap"
            raise InputError(f"stages {hi.expert!r} [{hi.t_low}, {hi.t_high}) and {lo.expert!r} "
                             f"[{lo.t_low}, {lo.t_high}) {kind}: stages must be ordered high "
                             f"noise first and contiguous (t_low of one == t_high of the next)")


def _check_boundary(b) -> None:
    if not (isinstance(b, (int, float)) and 0.0 < b < 1.0):
        raise InputError(f"boundary {b!r} must be a timestep fraction strictly between 0 and 1 "
                         f"(official T2V-A14B: 0.875; or give it as an SNR, see boundary_from_snr)")


def _guidance(g) -> float:
    # User values are checked once, at the edge (validate.parse_guide_scale); a schedule built
    # here from code takes the number as given.
    return float(g)


def _resolve_guidance(preset, guidance) -> list[float]:
    n = len(preset.experts)
    if guidance is None:
        return [e.guidance for e in preset.experts]
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        return [guidance] * n
    guidance = list(guidance)
    if len(guidance) == 1:
        return guidance * n
    if len(guidance) != n:
        names = [e.name for e in preset.experts]
        raise InputError(f"{len(guidance)} guidance scales {guidance} for preset "
                         f"{preset.name!r}; give 1 or {n} (in order {names})")
    return guidance


def _as_float(t) -> float:
    if hasattr(t, "numel"):  # torch tensor / numpy array
        if t.numel() != 1:
            raise InputError(f"select() needs one timestep, got a tensor of shape {tuple(t.shape)}")
        t = t.reshape(-1)[0].item()
    tv = float(t)
    if not tv >= 0:
        raise InputError(f"timestep {tv} must be >= 0")
    return tv


def _iter_values(timesteps) -> Iterable:
    if hasattr(timesteps, "tolist"):
        return timesteps.reshape(-1).tolist()
    return timesteps


# Module-level spellings of the constructors (docs/architecture.md lists them by these names).
dense = ExpertSchedule.dense
two_expert = ExpertSchedule.two_expert
from_boundaries = ExpertSchedule.from_boundaries
from_preset = ExpertSchedule.from_preset
