"""The one error metric of the numeric tests: max|actual - ref| / max|ref|.

A tolerance is a fraction of the reference's own scale, so it means the same whatever the size of
the values a test happens to produce (an absolute `atol` on unnormalised values passes or fails
with the magnitude of the data, not with the accuracy of the code). Choose `rtol` from the measured
spread and write the measurement next to the assertion. Exact results use `torch.equal`.

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, ref: torch.Tensor) -> float:
    """max|actual - ref| / max|ref|, computed in float64 (inputs may be bf16, fp16, fp32).

    0.0 when both are all zero; inf when only `ref` is all zero.
    """
    if actual.shape != ref.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs reference {tuple(ref.shape)}")
    a, r = actual.detach().double(), ref.detach().double()
    diff, scale = (a - r).abs().max().item(), r.abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def assert_close_rel(actual: torch.Tensor, ref: torch.Tensor, rtol: float, what: str = "") -> None:
    """Assert max|actual - ref| <= rtol * max|ref| (both finite), with the numbers in the message."""
    assert torch.isfinite(actual).all() and torch.isfinite(ref).all(), f"{what}: non-finite values"
    err = rel_err(actual, ref)
    if not err <= rtol:
        diff = (actual.detach().double() - ref.detach().double()).abs()
        raise AssertionError(
            f"{what + ': ' if what else ''}max|diff| / max|ref| = {err:.3e} > rtol {rtol:.1e} "
            f"(max|diff| {diff.max().item():.3e} at {diff.argmax().item()} of {diff.numel()}, "
            f"max|ref| {ref.detach().double().abs().max().item():.3e})")
