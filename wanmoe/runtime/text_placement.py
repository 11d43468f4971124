"""Where the text encoder runs: resident on its device, or waiting on the host and moved there
only to encode (then moved back, freeing the GPU), or on the CPU when the GPU is short of memory.

With expert offload on CUDA the umT5 encoder (11 GB in bf16 at full size) waits on the CPU and
moves to the GPU only to encode, then back (the official single-GPU behaviour). Without offload
it is loaded onto the GPU unless the GPU's free memory after the experts cannot hold it
(`text_home`); an encoder waiting on the host is moved to the GPU for the encode only when the
GPU has room for it at that moment, else it encodes on the CPU (`encoder_on`). `--t5-cpu`
keeps it on the CPU always.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

ENCODE_MARGIN = 1 << 30  # bytes beside the weights for one umT5-XXL encode at 512 tokens (~0.2 GB used)


def module_bytes(model: nn.Module) -> int:
    """Bytes of the module's parameters and buffers as they are stored (quantised at their size)."""
    seen = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def cuda_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device as the driver reports it (plus what torch caches unused)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def fits_on(device: torch.device, nbytes: int, free_bytes: int | None = None) -> bool:
    """True unless `device` is a CUDA GPU whose free memory cannot take `nbytes` + ENCODE_MARGIN."""
    if device.type != "cuda":
        return True
    free = cuda_free_bytes(device) if free_bytes is None else free_bytes
    return free >= nbytes + ENCODE_MARGIN


def text_home(device: torch.device, nbytes: int, free_bytes: int | None = None,
              notify: Callable[[str], None] | None = None) -> torch.device:
    """Where to load an encoder of `nbytes` meant to run on `device`: there, or the CPU when the
    GPU cannot hold it (it then encodes via `encoder_on`)."""
    if fits_on(device, nbytes, free_bytes):
        return device
    (notify or _stderr)(f"text encoder ({nbytes / 2**30:.1f} GiB) does not fit beside the loaded weights "
                        f"on {device}: it waits on the CPU")
    return torch.device("cpu")


@contextlib.contextmanager
def encoder_on(model: nn.Module, device: torch.device, *, free_bytes: int | None = None,
               notify: Callable[[str], None] | None = None) -> Iterator[nn.Module]:
    """Run the enclosed encoding with `model` on `device` when it can be there.

    Already on `device` (or `device` is not CUDA): used where it is. Waiting on the CPU (expert
    offload, or loaded there by `text_home`): moved to the GPU for the encode and back
    afterwards (also when encoding fails), freeing the GPU for the DiT; when the GPU's free memory
    cannot take it now, it encodes on the CPU instead.
    """
    here = _device_of(model)
    if device.type != "cuda" or here.type == "cuda":
        yield model
        return
    nbytes = module_bytes(model)
    if not fits_on(device, nbytes, free_bytes):
        (notify or _stderr)(f"text encoder ({nbytes / 2**30:.1f} GiB) does not fit in the free memory of "
                            f"{device}: encoding on the CPU")
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(here)


def _stderr(message: str) -> None:
    print(f"wanmoe: {message}", file=sys.stderr)
