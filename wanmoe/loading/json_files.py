"""Strict reading of the small JSON files a checkpoint carries (config.json, model_index.json,
wanmoe.json, *.safetensors.index.json, tokenizer.json).

They come from strangers like the weights do. Each reader returns an object (dict) or raises one
`CheckpointError` line naming the file and, where it applies, the key: a file that is `[]`, a
`num_layers` given as "30" or `true`, a `dim` its head count does not divide.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

from wanmoe.errors import CheckpointError

MAX_JSON_BYTES = 64 * 1024 * 1024  # tokenizer.json of umT5 is 16 MB; configs are a few KB
# DiT config keys (official and diffusers spellings) that must be positive ints
DIT_INT_KEYS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                "text_dim", "text_len", "num_attention_heads", "attention_head_dim",
                "in_channels", "out_channels")


def is_int(v) -> bool:
    """A JSON integer (`True` parses as a bool and is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def read_object(path: str | Path, what: str = "JSON file") -> dict:
    """The parsed file, which must be a JSON object; every failure is one CheckpointError line."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{p} is {p.stat().st_size} bytes, too large for a {what} "
                                  f"(limit {MAX_JSON_BYTES})")
        data = json.loads(p.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{p} cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, huge ints, bad UTF-8
        raise CheckpointError(f"{p} is not readable JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{p} nests too deeply to be a {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{p} must hold a JSON object ({{...}}) but holds a "
                              f"{type(data).__name__}; is it a {what}?")
    return data


def require_int(path, d: dict, key: str, *, minimum: int = 1) -> int:
    v = d[key]
    if not is_int(v) or v < minimum:
        raise CheckpointError(f"{path}: {key!r} is {v!r}; it must be an integer >= {minimum}")
    return v


def check_dit_config(path, c: dict) -> None:
    """Types and consistency of a DiT config.json (official or diffusers keys)."""
    for k in DIT_INT_KEYS:
        if k in c:
            require_int(path, c, k)
    if "eps" in c and (not isinstance(c["eps"], (int, float)) or isinstance(c["eps"], bool)
                       or not 0 < c["eps"] < 1):
        raise CheckpointError(f"{path}: 'eps' is {c['eps']!r}; it must be a number in (0, 1)")
    if "patch_size" in c:
        ps = c["patch_size"]
        if not isinstance(ps, list) or len(ps) != 3 or not all(is_int(v) and v >= 1 for v in ps):
            raise CheckpointError(f"{path}: 'patch_size' is {ps!r}; it must be three integers >= 1")
    heads = c.get("num_heads", c.get("num_attention_heads"))
    if "dim" in c and heads is not None:
        if c["dim"] % heads:
            raise CheckpointError(f"{path}: 'dim' {c['dim']} is not divisible by the head count "
                                  f"{heads}")
        if (c["dim"] // heads) % 2:
            raise CheckpointError(f"{path}: head dim {c['dim'] // heads} (dim {c['dim']} / "
                                  f"{heads} heads) must be even for RoPE")


def check_index(path, index: dict) -> dict[str, str]:
    """`weight_map` of a safetensors index: tensor name -> shard file name in the same folder."""
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{path} is not a safetensors index: 'weight_map' must be a non-empty "
                              "object of tensor name -> shard file")
    for name, shard in wm.items():
        if not isinstance(shard, str) or not _plain_file_name(shard):
            raise CheckpointError(f"{path}: weight_map[{name!r}] is {shard!r}; it must be the file "
                                  "name of a shard in the same folder")
    meta = index.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'metadata' must be an object")
    return wm


def _plain_file_name(s: str) -> bool:
    p = PurePosixPath(s)
    return bool(s) and "\\" not in s and "\x00" not in s and len(p.parts) == 1 and s not in (".", "..")


def check_tokenizer_json(path) -> None:
    """Cheap check of a tokenizer.json while resolving (a JSON object); the pipeline then loads
    the tokenizer in full before any weight (`pipeline.load_pipeline`)."""
    d = read_object(path, "tokenizer.json")
    if "model" in d and not isinstance(d["model"], dict):
        raise CheckpointError(f"{path}: 'model' must be an object describing the tokenizer model; "
                              "this is not a tokenizers tokenizer.json")


# ---- typed presets (wanmoe.json) --------------------------------------------------------------

def _matches(value, ann: str, where: str, path) -> None:
    """Check `value` against a dataclass annotation string ("int", "tuple[int, ...]", "X | None")."""
    import dataclasses

    ann = ann.strip()
    if "|" in ann and "[" not in ann.split("|")[0]:
        options = [a.strip() for a in ann.split("|")]
        if value is None and "None" in options:
            return
        ann = next(a for a in options if a != "None")
    if dataclasses.is_dataclass(value):
        check_types(value, path, where)
        return
    if ann.startswith("tuple["):
        inner = ann[len("tuple["):-1]
        if not isinstance(value, tuple):
            raise CheckpointError(f"{path}: {where} is {value!r}; expected a list")
        parts = _split_top(inner)
        if len(parts) == 2 and parts[1] == "...":
            parts = [parts[0]] * len(value)
        if len(parts) != len(value):
            raise CheckpointError(f"{path}: {where} is {list(value)!r}; expected {len(parts)} values")
        for i, (v, a) in enumerate(zip(value, parts)):
            _matches(v, a, f"{where}[{i}]", path)
        return
    ok = {"int": is_int(value), "str": isinstance(value, str), "bool": isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)}.get(ann, True)
    if not ok:
        raise CheckpointError(f"{path}: {where} is {value!r}; it must be of type {ann}")
    if ann == "int" and value < 1:  # every int of a preset is a size or a count
        raise CheckpointError(f"{path}: {where} is {value}; it must be >= 1")
    if ann == "float" and not math.isfinite(value):
        raise CheckpointError(f"{path}: {where} is {value}; it must be a finite number")


def _split_top(s: str) -> list[str]:
    """'int, tuple[int, int], float' -> ['int', 'tuple[int, int]', 'float'] (top-level commas)."""
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()] if cur.strip() else out


def check_types(obj, path, where: str = "preset") -> None:
    """Every field of a (nested) config dataclass has its annotated type: ints are ints, not
    "30", 30.0 or true (a preset read from JSON is built with whatever the file held)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        _matches(getattr(obj, f.name), f.type if isinstance(f.type, str) else f.type.__name__,
                 f"{where}.{f.name}", path)
