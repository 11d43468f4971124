"""Batched CFG when memory allows: the decision for a run that left `batched_cfg` unset.

A B=2 forward (conditional + unconditional together) runs fewer, larger kernels; it costs the
activations of a second sample. With `batched_cfg=None` (the CLI without `--batched-cfg` /
`--no-batched-cfg`), a CUDA run batches when the memory planner's activation model
(`runtime.memory.dit_activation_bytes`, B=2, plus the weight path's transient buffers) fits
`HEADROOM` x the device memory free once the first expert is in place; otherwise, on CPU, or when
there is no unconditional pass (guidance 1 everywhere), the passes run one after another as
before. Batched and separate passes agree to rounding (tests/e2e/test_generate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEADROOM = 0.8  # of the free memory: allocator fragmentation, the solver's and VAE's own tensors


@dataclass(frozen=True)
class CFGBatchDecision:
    batched: bool
    reason: str  # one line, for the log


def decide_batched_cfg(preset, tokens: int, dtype: torch.dtype, device_type: str, free_bytes: int | None,
                       weights: str | None = None, per_token_time: bool = False,
                       has_uncond: bool = True) -> CFGBatchDecision:
    """Whether to run cond + uncond as one batch of 2 (pure: the free bytes are given)."""
    from wanmoe.runtime.memory import dit_activation_bytes, weight_transient_bytes

    if not has_uncond:
        return CFGBatchDecision(False, "no unconditional pass (guidance 1)")
    if device_type != "cuda":
        return CFGBatchDecision(False, f"{device_type}: separate passes (the default off CUDA)")
    if free_bytes is None:
        return CFGBatchDecision(False, "free device memory unknown: separate passes")
    need = dit_activation_bytes(preset, tokens, 2, dtype, per_token_time) + \
        weight_transient_bytes(preset, weights or "Q8_0", dtype)
    budget = int(HEADROOM * free_bytes)
    fits = need <= budget
    return CFGBatchDecision(fits, f"B=2 needs {need / 2**30:.2f} GiB of {budget / 2**30:.2f} GiB "
                                  f"({HEADROOM:.0%} of free): " + ("batched" if fits else "separate passes"))


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can get on `device`: free to the driver plus the caching
    allocator's reserved-but-unused blocks; None where this cannot be asked (CPU)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
