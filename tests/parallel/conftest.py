"""Fixtures of the multi-process tests (helpers in helpers_parallel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_parallel import COMMON, load_latents, run_cli


@pytest.fixture(scope="session")
def tiny_a14b(tmp_path_factory) -> Path:
    from wanmoe.testing.tiny import write_tiny_official_a14b

    return write_tiny_official_a14b(tmp_path_factory.mktemp("Wan2.2-T2V-A14B-par"), seed=0)


@pytest.fixture(scope="session")
def reference(tiny_a14b, tmp_path_factory):
    """Single-process final latents per size (computed once per session)."""
    cache = {}
    root = tmp_path_factory.mktemp("reference")

    def get(size_args: tuple[str, ...]):
        if size_args not in cache:
            out = root / f"ref{len(cache)}"
            rc = run_cli(["generate", "a red ball rolls", "--ckpt-dir", str(tiny_a14b),
                          *size_args, *COMMON, "--out", f"{out}.mp4",
                          "--save-latents", f"{out}.safetensors"])
            assert rc == 0
            cache[size_args] = load_latents(f"{out}.safetensors")
        return cache[size_args]

    return get
