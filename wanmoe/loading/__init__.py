"""Checkpoint loading: what a file is, how its names map, and streaming it into a meta-built model.

Bottom to top (each module imports only those above it in this list; tests/unit/test_layering.py):
  sources.py     `TensorSource` and the safetensors (single, sharded) and pickle readers
  gguf.py        the GGUF reader and writer
  containers.py  `open_tensors(path)`: picks the reader for a path; `read_json`
  renames.py     template rename rules and the wrapper prefixes of single-file saves
  detect.py      detection rules, pure functions of names / shapes / dtypes / config dicts
  fp8_scaled.py  scaled-fp8 source views (scales applied at load, or kept as `FP8Weight`)
  stream.py      meta build, strict tensor-by-tensor load into the storage dtypes
  keymaps/       rename tables per component (`dit`, `t5`, `vae`) and `key_map_for(detection)`
  opener.py      `open_component(path, kind, keep_quantized=False) -> (source, key map)`
  checkpoint.py  whole checkpoints (folders or explicit files) resolved and checked from headers
  components.py  `load_dit`, `load_text_encoder`, `load_vae`
  inspect.py     `wanmoe inspect` and `detect(path)` for any file or folder
"""

from wanmoe.loading.containers import open_tensors
from wanmoe.loading.opener import open_component

__all__ = ["open_component", "open_tensors"]
