"""`--compile`: torch.compile each repeated DiT block, with a fallback to eager.

Regional compilation: every block of `model.meta.repeated` gets a compiled forward. The blocks
share one code object, and torch inlines their parameters as graph inputs, so one compiled graph
serves them all (one compile per input shape / dtype, not one per block). What stays eager: the
embeddings, the head, the block runner (streaming, caching, sequence parallel wrap it unchanged).

RoPE inside the compiled region: inductor does not lower complex dtypes, so the block is given
the real float64 view of the complex128 table (`torch.view_as_real`, no copy) and
`models.rope.rope_apply` rotates with real float64 ops (bit-identical in eager; compiled, the
same formula fused into one kernel: float32 in, float64 math, float32 out).

A failure to compile (no C compiler, an unsupported op, a torch bug) is not an error: the model
falls back to its eager blocks for the rest of the process and one warning line says why.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


class CompileFallbackWarning(UserWarning):
    """torch.compile failed; the blocks run eager."""


class _Fallback:
    """Shared by the blocks of one model: once one fails, all run eager (one warning)."""

    def __init__(self) -> None:
        self.failed: str | None = None

    def fail(self, exc: BaseException) -> None:
        if self.failed is None:
            root = exc  # dynamo wraps the backend's error (BackendCompilerFailed): name the cause
            for _ in range(8):
                inner = getattr(root, "inner_exception", None) or root.__cause__
                if inner is None or inner is root:
                    break
                root = inner
            lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
            self.failed = f"{type(root).__name__}: {lines[0][:200] if lines else ''}"
            warnings.warn(f"--compile: torch.compile failed ({self.failed}); running the DiT "
                          f"blocks eager", CompileFallbackWarning, stacklevel=3)


class CompiledBlockForward:
    """Installed as `block.forward`: the compiled forward, or the eager one after a failure."""

    def __init__(self, eager, compiled, fallback: _Fallback) -> None:
        self.eager, self.compiled, self.fallback = eager, compiled, fallback

    def __call__(self, x, e0, context, rope, k_lens, lowp):
        if self.fallback.failed is None:
            real = torch.view_as_real(rope) if rope is not None and rope.is_complex() else rope
            try:
                return self.compiled(x, e0, context, real, k_lens, lowp)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
                self.fallback.fail(exc)
        return self.eager(x, e0, context, rope, k_lens, lowp)


def compile_blocks(model: nn.Module, backend="inductor", mode: str | None = None,
                   dynamic: bool | None = False) -> int:
    """Give every repeated block of `model` a compiled forward; returns how many (0: already).

    backend: one of COMPILE_BACKENDS or a torch.compile backend callable (tests).

    Compilation happens at the first forward (torch.compile is lazy). `dynamic=False`: one
    graph per token count (a run has one or two: cond and batched CFG), no symbolic shapes.
    """
    if isinstance(backend, str) and backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend {backend!r} is not one of {COMPILE_BACKENDS}")
    if is_compiled(model):
        return 0
    fallback = _Fallback()
    blocks = getattr(model, model.meta.repeated)
    for block in blocks:
        eager = block.forward
        compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=dynamic)
        block.forward = CompiledBlockForward(eager, compiled, fallback)
    model._compile_fallback = fallback
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    """Undo `compile_blocks` (the blocks' own forward again)."""
    for block in getattr(model, model.meta.repeated):
        if isinstance(block.__dict__.get("forward"), CompiledBlockForward):
            del block.__dict__["forward"]
    model.__dict__.pop("_compile_fallback", None)


def is_compiled(model: nn.Module) -> bool:
    return "_compile_fallback" in model.__dict__


def compile_failed(model: nn.Module) -> str | None:
    """Why `model`'s compiled blocks fell back to eager, or None (not compiled, or working)."""
    fallback = model.__dict__.get("_compile_fallback")
    return None if fallback is None else fallback.failed
