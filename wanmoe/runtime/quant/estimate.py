"""Size of one DiT expert per weight format: on disk and resident in memory at run time.

Rules (spec formats.md §4, wan22.md §2.8):
* Quantised tensors are the block linears only (`quantize_model`'s set): Q8_0 / Q6_K all of
  them; Q4_K_M gives `self_attn.v`, `cross_attn.v` and `ffn.2` Q6_K, the rest Q4_K; fp8 / int8
  one byte per weight plus an fp32 scale per output channel.
* GGUF files keep 1-D tensors, tensors of <= 1024 elements, modulation tables and the 5-D
  patch embedding in F32. The other non-block 2-D tensors (text/time embeddings,
  time_projection, head) keep the intermediate file's type: F16 by default (today's city96
  `convert.py`), "F32" for older files (`nonblock="F32"`).
* Our own files (`wanmoe convert`) and everything resident at run time keep unquantised
  tensors in `WanDiT.storage_dtype(name, compute_dtype)`: fp32 for the fp32 regions (time
  MLPs, modulation, norms, head), the compute dtype for the bf16-region tensors. This costs
  ~0.37 GB per A14B expert over an all-bf16 file and keeps the official bf16 run bit-exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from wanmoe.errors import InputError
from wanmoe.runtime.quant.apply import is_block_weight
from wanmoe.runtime.quant.gguf_dequant import QUANT_SIZES

FORMATS = ("fp32", "bf16", "fp8", "int8", "Q8_0", "Q6_K", "Q4_K_M")
GGUF_FORMATS = ("Q8_0", "Q6_K", "Q4_K_M")
_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "FP8": 1, "I8": 1}
_TORCH_TYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def dit_entries(dims: Mapping) -> list[tuple[str, tuple[int, ...]]]:
    """Official tensor layout of a Wan DiT from its dims (Detection.dims / DiTConfig fields)."""
    d, f, n = dims["dim"], dims["ffn_dim"], dims["num_layers"]
    patch = tuple(dims.get("patch_size", (1, 2, 2)))
    out = [("patch_embedding.weight", (d, dims["in_dim"], *patch)), ("patch_embedding.bias", (d,))]
    for prefix, shapes in (("text_embedding", ((d, dims.get("text_dim", 4096)), (d, d))),
                           ("time_embedding", ((d, dims.get("freq_dim", 256)), (d, d)))):
        for i, shape in zip((0, 2), shapes):
            out += [(f"{prefix}.{i}.weight", shape), (f"{prefix}.{i}.bias", (d,))]
    out += [("time_projection.1.weight", (6 * d, d)), ("time_projection.1.bias", (6 * d,))]
    for b in range(n):
        p = f"blocks.{b}."
        out.append((p + "modulation", (1, 6, d)))
        for attn in ("self_attn", "cross_attn"):
            for x in "qkvo":
                out += [(f"{p}{attn}.{x}.weight", (d, d)), (f"{p}{attn}.{x}.bias", (d,))]
            out += [(f"{p}{attn}.norm_q.weight", (d,)), (f"{p}{attn}.norm_k.weight", (d,))]
        out += [(p + "norm3.weight", (d,)), (p + "norm3.bias", (d,))]
        out += [(p + "ffn.0.weight", (f, d)), (p + "ffn.0.bias", (f,)),
                (p + "ffn.2.weight", (d, f)), (p + "ffn.2.bias", (d,))]
    head_out = dims["out_dim"] * math.prod(patch)
    out += [("head.head.weight", (head_out, d)), ("head.head.bias", (head_out,)),
            ("head.modulation", (1, 2, d))]
    return out


def _entries(entries) -> list[tuple[str, tuple[int, ...]]]:
    """Manifest dicts ({name, shape}), TensorSource.entries() ({name: (shape, dtype)}),
    (name, shape) pairs, or a DiT `Detection` (layout rebuilt from its dims)."""
    if hasattr(entries, "dims") and hasattr(entries, "component"):
        return dit_entries(entries.dims)
    if isinstance(entries, Mapping):
        return [(n, tuple(v[0])) for n, v in entries.items()]
    return [(e["name"], tuple(e["shape"])) if isinstance(e, Mapping) else (e[0], tuple(e[1])) for e in entries]


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"weight format {fmt!r} is not one of {', '.join(FORMATS)}")


def block_weight_type(name: str, fmt: str) -> str:
    """Storage type of a block-linear weight in `fmt` (Q4_K_M: v and ffn.2 Q6_K, the rest Q4_K)."""
    if fmt == "Q4_K_M":
        return "Q6_K" if (".v." in name or name.endswith("ffn.2.weight")) else "Q4_K"
    return {"fp32": "F32", "bf16": "BF16", "fp8": "FP8", "int8": "I8"}.get(fmt, fmt)


def gguf_float_type(name: str, shape: tuple[int, ...], nonblock: str) -> str:
    """GGUF type of an unquantised tensor: F32 for 1-D / <= 1024-element / modulation / 5-D
    tensors (city96 `convert.py`), else `nonblock` (the intermediate file's float type)."""
    if len(shape) != 2 or math.prod(shape) <= 1024 or "modulation" in name:
        return "F32"
    return nonblock


def _storage_type(name: str, compute_dtype: torch.dtype) -> str:
    from wanmoe.models.dit import WanDiT  # the one rule the loader also uses

    return _TORCH_TYPE[WanDiT.storage_dtype(name, compute_dtype)]


def tensor_types(entries, fmt: str, where: str = "file", nonblock: str = "F16",
                 compute_dtype: torch.dtype = torch.bfloat16) -> dict[str, str]:
    """{name: storage type} of every tensor for format `fmt`, on disk ("file") or at run time ("run")."""
    _check(fmt)
    out = {}
    for name, shape in _entries(entries):
        if is_block_weight(name, shape):
            out[name] = block_weight_type(name, fmt)
        elif fmt == "fp32":
            out[name] = "F32"
        elif fmt in GGUF_FORMATS and where == "file":
            out[name] = gguf_float_type(name, shape, nonblock)
        else:
            out[name] = _storage_type(name, compute_dtype)
    return out


def tensor_bytes(shape: tuple[int, ...], qtype: str) -> int:
    """Bytes of one tensor stored as `qtype` (GGUF type, F32/F16/BF16, FP8 or I8)."""
    n = math.prod(shape)
    if qtype in _BYTES:
        extra = 4 * shape[0] if qtype in ("FP8", "I8") else 0  # fp32 scale per output channel
        return n * _BYTES[qtype] + extra
    block, size = QUANT_SIZES[qtype]
    return n // block * size


def _total(entries, types: Mapping[str, str]) -> int:
    return sum(tensor_bytes(shape, types[name]) for name, shape in _entries(entries))


def file_bytes(entries, fmt: str, nonblock: str = "F16") -> int:
    """Bytes of one expert's weights on disk in `fmt` (GGUF conventions for the Q formats)."""
    return _total(entries, tensor_types(entries, fmt, "file", nonblock))


def resident_bytes(entries, mode: str, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one expert holds in memory when run with weights `mode` (a GGUF format: `keep`)."""
    return _total(entries, tensor_types(entries, mode, "run", compute_dtype=compute_dtype))


def estimate_rows(entries, formats: Iterable[str] = FORMATS, nonblock: str = "F16",
                  compute_dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """One dict per format: file and resident bytes and a histogram of the storage types."""
    rows = []
    for fmt in formats:
        types = tensor_types(entries, fmt, "file", nonblock)
        hist: dict[str, int] = {}
        for t in types.values():
            hist[t] = hist.get(t, 0) + 1
        rows.append({"format": fmt, "file_bytes": _total(entries, types),
                     "resident_bytes": resident_bytes(entries, fmt, compute_dtype), "types": hist})
    return rows


def _dit_detections(obj) -> list:
    """DiT detections inside a Detection / list of them (folders carry theirs in `parts`)."""
    items = obj if isinstance(obj, (list, tuple)) and obj and hasattr(obj[0], "component") else [obj]
    found = []
    for det in items:
        if getattr(det, "component", None) == "dit":
            found.append(det)
        found += _dit_detections(list(getattr(det, "parts", {}).values())) if getattr(det, "parts", None) else []
    return found


def estimate_table(entries, formats: Iterable[str] = FORMATS, nonblock: str = "F16",
                   compute_dtype: torch.dtype = torch.bfloat16) -> str:
    """Plain-text table of `estimate_rows` (what `wanmoe inspect --estimate` prints).

    `entries`: tensor entries of one expert (see `_entries`), or Detection(s) from `detect`.
    """
    n_experts = 1
    if hasattr(entries, "component") or (isinstance(entries, (list, tuple)) and entries
                                         and hasattr(entries[0], "component")):
        dits = _dit_detections(entries)
        if not dits:
            return "memory estimate: only for DiT checkpoints (no DiT found)"
        entries, n_experts = dits[0], len(dits)
    rows = estimate_rows(entries, formats, nonblock, compute_dtype)
    big = max(r["file_bytes"] for r in rows) >= 1e8
    unit, div = ("GB", 1e9) if big else ("MB", 1e6)
    lines = [f"{'format':<8} {'file ' + unit:>8} {'resident ' + unit:>12}  tensor types (file)"]
    for r in rows:
        hist = ", ".join(f"{k} {v}" for k, v in sorted(r["types"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['format']:<8} {r['file_bytes'] / div:>8.2f} {r['resident_bytes'] / div:>12.2f}  {hist}")
    dt = str(compute_dtype).removeprefix("torch.")
    if n_experts > 1:
        lines.append(f"{n_experts} experts: multiply by {n_experts} when all are resident at once.")
    lines.append(f"{unit} = 10^{9 if big else 6} bytes, one expert. Resident: {dt} run, unquantised tensors "
                 f"in their storage dtype; GGUF formats resident as --weights keep. GGUF non-block 2-D "
                 f"tensors: {nonblock}.")
    return "\n".join(lines)
