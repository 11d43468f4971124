"""wanmoe.sampling: flow-matching solvers, initial noise, classifier-free guidance, the loop."""

from __future__ import annotations

from wanmoe.errors import InputError
from wanmoe.sampling.base import FlowSolver
from wanmoe.sampling.dpmpp import FlowDPMPP
from wanmoe.sampling.euler import FlowEuler
from wanmoe.sampling.lightning import LIGHTNING, FlowEulerLightning
from wanmoe.sampling.unipc import FlowUniPC

SOLVERS: dict[str, type[FlowSolver]] = {"unipc": FlowUniPC, "dpm++": FlowDPMPP, "euler": FlowEuler,
                                         "euler-lightning": FlowEulerLightning}
PRESETS: dict[str, dict] = {"lightning": LIGHTNING}  # sampler settings of distilled weights


def make_solver(name: str, steps: int, shift: float) -> FlowSolver:
    """A fresh solver by name ('unipc' official default, 'dpm++' official alternative, 'euler',
    'euler-lightning' for the Wan2.2-Lightning 4-step LoRAs)."""
    if name not in SOLVERS:
        raise InputError(f"solver {name!r} is not one of {sorted(SOLVERS)} "
                         f"(official default: 'unipc')")
    return SOLVERS[name](steps, shift)  # the solver's grid validates steps and shift


__all__ = ["FlowDPMPP", "FlowEuler", "FlowEulerLightning", "FlowSolver", "FlowUniPC", "LIGHTNING",
           "PRESETS", "SOLVERS", "make_solver"]
