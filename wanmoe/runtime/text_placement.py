"""Where the text encoder runs: on its device for the whole run, or shuttled there to encode.

With expert offload on CUDA the umT5 encoder (11 GB in bf16 at full size) waits on the CPU and
moves to the GPU only to encode, then back (the official single-GPU behaviour).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def encoder_on(model: nn.Module, device: torch.device, shuttle: bool) -> Iterator[nn.Module]:
    """Run the enclosed encoding with `model` on `device`; with `shuttle`, move it back to the
    CPU afterwards (also when encoding fails)."""
    if not shuttle or device.type != "cuda":
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
