"""Shared pieces of the DiT tests: the tiny config, seeded weights, twins
(the error metric is `tolerance.rel_err`).

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from wanmoe.configs import DiTConfig
from wanmoe.testing.references import diffusers_kwargs  # noqa: F401 (re-exported for the parity tests)

REPO = Path(__file__).resolve().parents[1]

# head dim 48 -> RoPE split 16/16/16
TINY = DiTConfig(dim=96, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                 text_dim=32, text_len=16)


def randomize_(model, seed: int = 0):
    """Deterministic non-trivial weights (non-unit norms, non-zero biases and head); returns model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) / model.cfg.dim**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (the one helper: tests/tolerance.rel_err)."""
    from tolerance import rel_err

    return rel_err(a, b)


def load_benchmark(name: str) -> ModuleType:
    """Import `benchmarks/<name>.py` (not a package) so tests can check its formulas and code paths."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
