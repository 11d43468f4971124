"""Classifier-free guidance around the active expert (spec §4.2).

Per step: v_c = DiT(x, t, prompt) first, then v_u = DiT(x, t, negative prompt), both through
the expert of the current stage, combined in float32 as v = v_u + g·(v_c - v_u).
Guidance 1.0 (or no negative context) skips the unconditional pass and returns v_c; the
official code always runs both passes, and there v_u + 1·(v_c - v_u) equals v_c up to one
rounding. `batched=True` runs both passes as one B=2 forward (same numbers for a
batch-independent model; it trades memory for fewer, larger kernels).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import torch

from wanmoe.errors import InputError
from wanmoe.models.experts import ExpertStage

ExpertFn = Callable[..., torch.Tensor]  # model(x [B,C,F,H,W], t [B], context, seq_len=None)


class CFGDenoiser:
    """Callable (stage, x, t) -> guided velocity, with the same shape as x."""

    def __init__(self, experts: Mapping[str, ExpertFn], cond: Sequence[torch.Tensor],
                 uncond: Sequence[torch.Tensor] | None, batched: bool = False,
                 seq_len: int | None = None) -> None:
        self.experts = experts
        self.cond = list(cond)
        self.uncond = None if uncond is None else list(uncond)
        if self.uncond is not None and len(self.uncond) != len(self.cond):
            raise InputError(f"{len(self.cond)} prompt contexts but {len(self.uncond)} negative "
                             f"contexts; give one negative per prompt")
        self.batched = batched
        self.seq_len = seq_len
        self.calls = 0  # number of model forwards run (a B=2 forward counts once)

    def expert(self, stage: ExpertStage) -> ExpertFn:
        try:
            return self.experts[stage.expert]
        except KeyError:
            raise InputError(f"schedule asks for expert {stage.expert!r}, but only "
                             f"{sorted(self.experts)} are loaded") from None

    def __call__(self, stage: ExpertStage, x: torch.Tensor, t) -> torch.Tensor:
        squeeze = x.dim() == 4  # [C,F,H,W] -> add the batch dim the DiT expects
        xb = x.unsqueeze(0) if squeeze else x  # [B, C, F, H, W]
        b = xb.shape[0]
        if b != len(self.cond):
            raise InputError(f"sample batch {b} != number of prompt contexts {len(self.cond)}; "
                             f"give one prompt context per sample")
        tb = _timestep_batch(t, b, xb.device)  # [B]
        model = self.expert(stage)
        g = stage.guidance
        if self.uncond is None or g == 1.0:
            v = self._forward(model, xb, tb, self.cond)
        elif self.batched:
            both = self._forward(model, torch.cat([xb, xb]), torch.cat([tb, tb]),
                                 self.cond + self.uncond)  # [2B, C, F, H, W]
            v_c, v_u = both[:b], both[b:]
            v = v_u + g * (v_c - v_u)
        else:
            v_c = self._forward(model, xb, tb, self.cond)
            v_u = self._forward(model, xb, tb, self.uncond)
            v = v_u + g * (v_c - v_u)
        return v.squeeze(0) if squeeze else v

    def _forward(self, model: ExpertFn, x, t, context) -> torch.Tensor:
        self.calls += 1
        return model(x, t, context, seq_len=self.seq_len).float()


class PhasedGuidance:
    """Phased guidance (`--cfg-steps K`): the first K steps with the stage's CFG scale, every
    later step with guidance 1.0, i.e. one conditional forward and no unconditional pass.

    Wraps any denoiser called once per step as (stage, x, t); `cfg_steps=None` (or K >= steps)
    passes every call through unchanged, so the result equals plain CFG bit for bit. Cost:
    2·K + (steps − K) DiT forwards instead of 2·steps (all-CFG) or steps (guidance 1).
    """

    def __init__(self, denoiser, cfg_steps: int | None, start: int = 0) -> None:
        self.denoiser = denoiser
        self.cfg_steps = cfg_steps
        self.step = start  # index of the next step (a resumed run starts later)

    def __call__(self, stage: ExpertStage, x: torch.Tensor, t) -> torch.Tensor:
        i, self.step = self.step, self.step + 1
        if self.cfg_steps is not None and i >= self.cfg_steps and stage.guidance != 1.0:
            stage = dataclasses.replace(stage, guidance=1.0)
        return self.denoiser(stage, x, t)


def _timestep_batch(t, b: int, device) -> torch.Tensor:
    """Model timestep(s) as a [B] tensor on device (int64 stays int64)."""
    t = torch.as_tensor(t)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.shape[0] == 1 and b > 1:
        t = t.expand(b)
    return t.to(device)
