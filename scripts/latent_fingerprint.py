"""Fingerprints of final latents on the tiny official checkpoints (refactor guard).

Writes the tiny A14B and TI2V-5B checkpoints (seed 0), generates on the CPU in fp32 and in the
official bf16 mixed precision with fixed seeds, and prints one SHA-256 of the latent bytes per
run. Run it on two commits: equal lines mean bit-identical latents.

    python scripts/latent_fingerprint.py
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wanmoe.pipeline import load_pipeline  # noqa: E402
from wanmoe.testing.tiny import write_tiny_official_a14b, write_tiny_official_ti2v5b  # noqa: E402

RUNS = [  # (model, dtype, load_pipeline kwargs, generate kwargs)
    ("a14b", "fp32", {}, {}),
    ("a14b", "bf16", {}, {}),
    ("a14b", "fp32", {}, {"solver": "dpm++"}),
    ("a14b", "fp32", {}, {"batched_cfg": True}),
    ("a14b", "fp32", {"weights": "bf16"}, {}),
    ("a14b", "bf16", {"weights": "fp8"}, {}),
    ("a14b", "fp32", {"weights": "int8"}, {}),
    ("a14b", "fp32", {"per_token_time": True}, {}),
    ("ti2v", "fp32", {}, {}),
    ("ti2v", "bf16", {}, {}),
]


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"a14b": write_tiny_official_a14b(Path(tmp) / "a14b", seed=0),
                "ti2v": write_tiny_official_ti2v5b(Path(tmp) / "ti2v", seed=0)}
        for model, dtype, load, extra in RUNS:
            pipe = load_pipeline(dirs[model], device="cpu", dtype=dtype, **load)
            res = pipe.generate("a red ball rolls to the right", size="64*64", frames=5, steps=4,
                                seed=11, progress=False, **extra)
            digest = hashlib.sha256(res.latents.contiguous().numpy().tobytes()).hexdigest()[:16]
            frames = hashlib.sha256(res.frames.numpy().tobytes()).hexdigest()[:16]
            print(f"{model:5s} {dtype:5s} {str(load):26s} {str(extra):24s} latents {digest} frames {frames}")


if __name__ == "__main__":
    main()
