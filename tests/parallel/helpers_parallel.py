"""Multi-process tests: torchrun (python -m torch.distributed.run) subprocesses with gloo on the
CPU, on the tiny official A14B checkpoint in fp32, compared with one-process runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# 48*48, 9 frames -> latents [16, 3, 6, 6] -> 3 x 3 x 3 = 27 tokens: not divisible by U = 2.
ODD = ["--size", "48*48", "--frames", "9"]
# 64*64, 5 frames -> latents [16, 2, 8, 8] -> 2 x 4 x 4 = 32 tokens.
EVEN = ["--size", "64*64", "--frames", "5"]
# 4 UniPC steps at shift 12 visit both experts (3 high-noise, 1 low-noise), so guidance 4 and 3.
COMMON = ["--steps", "4", "--seed", "11", "--quiet"]


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], *, launcher: list[str] | None = None,
             timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m wanmoe ARGS`."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           *(launcher or ["--standalone"]), "--nproc_per_node", str(nproc), "-m", "wanmoe", *args]
    return subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def run_cli(args: list[str]) -> int:
    """One process, in this interpreter (the reference)."""
    from wanmoe.cli import main

    return main(args)


def load_latents(path) -> "torch.Tensor":
    from safetensors.torch import load_file

    return load_file(str(path))["latents"]


def rel_diff(a, b) -> float:
    return float((a - b).norm() / b.norm())


