"""`torch.load` of untrusted `.pth` files: weights only, and any failure as one line naming the file.

`weights_only=True` refuses pickles that would run code (a legacy pickle, a class instance, a
random blob); torch reports that as a many-line `UnpicklingError`, and random bytes raise
`RuntimeError`, `EOFError`, `ValueError`, `UnicodeDecodeError`, ... depending on where the parser
trips. All of them become one `CheckpointError` line here. Zip-format files (torch >= 1.6) are
memory-mapped; the legacy format cannot be and is read in full.
"""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from wanmoe.errors import CheckpointError

# What torch.load raises on a corrupt, truncated or refused file (it has no error type of its own).
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, OverflowError, pickle.UnpicklingError, struct.error,
               zipfile.BadZipFile, AssertionError, NotImplementedError, RecursionError)


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    if "Weights only load failed" in line or "weights_only" in line:
        line = "weights-only loading refused it (not a pickle of tensors only)"
    return line if len(line) <= limit else line[:limit] + "..."


def _load(path: Path, mmap: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr
        return torch.load(path, mmap=mmap, weights_only=True, map_location="cpu")


def load_weights_only(path: str | Path):
    """`torch.load(path, weights_only=True)` (memory-mapped when the file is zip format)."""
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)
    try:
        return _load(path, mmap=is_zip)
    except LOAD_ERRORS as e:
        kind = "" if is_zip else " (not the zip format of torch >= 1.6: a legacy or foreign file)"
        raise CheckpointError(f"{path} is truncated, corrupt or not a weights-only torch "
                              f"checkpoint{kind}: {_first_line(e)}") from None
