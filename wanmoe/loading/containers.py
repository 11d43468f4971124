"""Open any checkpoint container as a `TensorSource`: the one dispatch over file kinds.

`open_tensors(path)` accepts a `.safetensors` file, a sharded set (`*.safetensors.index.json`
or a folder holding one, or a folder with a single `.safetensors`), a `.pth`/`.pt` pickle and a
`.gguf` file. The readers (`sources.py`, `gguf.py`) know nothing of each other; this module sits
above both, so neither imports the other back.
"""

from __future__ import annotations

import json
from pathlib import Path

from wanmoe.errors import CheckpointError
from wanmoe.loading.gguf import open_gguf
from wanmoe.loading.sources import PickleSource, SafetensorsFile, ShardedSafetensors, TensorSource

# (file-name endings, opener), first match wins: ".index.json" names a shard set.
OPENERS = (
    ((".index.json",), ShardedSafetensors),
    ((".safetensors",), SafetensorsFile),
    ((".pth", ".pt", ".bin", ".ckpt"), PickleSource),
    ((".gguf",), open_gguf),
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # what marks a tokenizer folder


def find_index(folder: Path) -> Path | None:
    """The `*.safetensors.index.json` in a folder (None if there is none; error if several)."""
    found = sorted(folder.glob("*.safetensors.index.json"))
    if len(found) > 1:
        raise CheckpointError(f"{folder} holds several safetensors indexes ({[f.name for f in found]}); "
                              "point at one of them")
    return found[0] if found else None


def open_tensors(path: str | Path) -> TensorSource:
    """Open a checkpoint file, shard index or folder of one; headers only, no tensor data."""
    p = Path(path)
    if p.is_dir():
        idx = find_index(p)
        if idx is not None:
            return ShardedSafetensors(idx)
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return SafetensorsFile(files[0])
        raise CheckpointError(f"{p} holds no safetensors index and {len(files)} .safetensors files; "
                              "expected an index.json or exactly one weights file")
    if not p.exists():
        raise CheckpointError(f"checkpoint file {p} does not exist")
    name = p.name.lower()
    for endings, opener in OPENERS:
        if name.endswith(endings):
            return opener(p)
    raise CheckpointError(f"{p}: unknown checkpoint type; expected .safetensors, "
                          ".safetensors.index.json, .pth/.pt/.bin/.ckpt or .gguf")


def container_of(src: TensorSource) -> str:
    """Container label of an opened TensorSource: gguf | sharded | pickle | safetensors."""
    if src.path.suffix.lower() == ".gguf":
        return "gguf"
    if isinstance(src, ShardedSafetensors):
        return "sharded"
    return "pickle" if isinstance(src, PickleSource) else "safetensors"


def read_json(p: Path) -> dict:
    """Parsed JSON object; CheckpointError naming the file when it is unreadable, not JSON or not
    an object (strict and bounded: `json_files.read_object`)."""
    from wanmoe.loading.json_files import read_object

    return read_object(p)


def is_tokenizer_dir(p: Path) -> bool:
    """A folder holding a tokenizer file (`TOKENIZER_FILES`)."""
    return p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)
