"""`wanmoe convert SRC --to bf16|fp8|gguf-q8_0 [--out DIR_OR_FILE]`: one file per DiT expert.

Targets (official tensor names in every output):
* bf16: safetensors; every tensor in `WanDiT.storage_dtype(name, bf16)` (bf16 for the bf16-region
  tensors, fp32 for the fp32 regions), so the official bf16 run is reproduced bit-exactly.
* fp8: safetensors, our scaled-fp8 layout: block linears as `X.weight` float8_e4m3fn plus
  `X.weight_scale` float32 `[out, 1]` (w = weight * weight_scale); the rest as for bf16.
  The header metadata says `wanmoe.quant = fp8_e4m3fn/per-channel`.
* gguf-q8_0: GGUF (arch "wan", formats.md §4): block linears Q8_0; 1-D tensors, tensors of
  <= 1024 elements, modulation tables and the 5-D patch embedding F32; the other non-block
  tensors unquantised (F16, or F32 with --gguf-nonblock f32; BF16 sources stay BF16).
Any layout the loader reads (official, prefixed, diffusers, ComfyUI fp8_scaled, GGUF) can be
the source. Tensors are converted and written one at a time (peak memory: one tensor), into a
temporary file that is renamed when complete; the experts of a folder are renamed into place
only once all of them have converted.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from wanmoe.errors import CheckpointError, InputError

TARGETS = ("bf16", "fp8", "gguf-q8_0")
_ST_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float8_e4m3fn: "F8_E4M3", torch.int8: "I8"}
FP8_METADATA = {"wanmoe.quant": "fp8_e4m3fn/per-channel", "wanmoe.quant_scale_suffix": ".weight_scale"}


@dataclass
class _Out:
    """One safetensors tensor to write: its name, dtype, shape and a producer."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]


# ---- source --------------------------------------------------------------------------------

def _open_dit(path: Path):
    """(source, {official name: source name}) of one DiT expert in any readable layout."""
    from wanmoe.loading.opener import open_component

    src, key_map = open_component(path, "dit")  # scaled fp8: scales applied as tensors are read
    key_map = key_map or (lambda n: n)  # None: names are official already
    names = {}
    for key in src.keys():
        official = key_map(key)
        if official is not None:
            names[official] = key
    return src, names


def expert_paths(src: Path) -> dict[str, Path]:
    """Expert name -> weights path: the experts of a checkpoint folder, or SRC itself."""
    if (src / "wanmoe.json").is_file():
        from wanmoe.loading.containers import read_json

        meta = read_json(src / "wanmoe.json")
        try:
            return {e["name"]: src / meta["files"][e["name"]] for e in meta["preset"]["experts"]}
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{src / 'wanmoe.json'} lists no weights file for an expert ({e!r} "
                                  "missing); it needs preset.experts[].name and files.<expert name>") from None
    pairs = {"high_noise": "high_noise_model", "low_noise": "low_noise_model"}
    if (src / "model_index.json").is_file():
        pairs = {"high_noise": "transformer", "low_noise": "transformer_2"}
        if not (src / "transformer_2").is_dir():  # a dense model (TI2V-5B): one transformer
            pairs = {"dense": "transformer"}
    found = {e: src / d for e, d in pairs.items() if (src / d).is_dir()}
    return found or {_stem(src): src}


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".safetensors.index.json", ".safetensors", ".gguf", ".pth", ".pt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---- plans ---------------------------------------------------------------------------------

def _loader(src, key: str) -> Callable[[], torch.Tensor]:
    return lambda: src.get(key, torch.float32)  # exact for every stored float type


def _plan_safetensors(src, names: dict[str, str], target: str) -> list[_Out]:
    from wanmoe.models.dit import WanDiT
    from wanmoe.runtime.quant.apply import is_block_weight
    from wanmoe.runtime.quant.quantize import quantize_fp8

    outs = []
    for name, key in names.items():
        shape, load = tuple(src.shape(key)), _loader(src, key)
        if target == "fp8" and is_block_weight(name, shape):
            cache: dict[str, torch.Tensor] = {}

            def weight(load=load, cache=cache):
                cache["q"], cache["scale"] = quantize_fp8(load())
                return cache["q"]

            outs.append(_Out(name, torch.float8_e4m3fn, shape, weight))
            outs.append(_Out(name + "_scale", torch.float32, (shape[0], 1), lambda c=cache: c.pop("scale")))
            continue
        dt = WanDiT.storage_dtype(name, torch.bfloat16)
        outs.append(_Out(name, dt, shape, lambda load=load, dt=dt: load().to(dt)))
    return outs


def _plan_gguf(src, names: dict[str, str], nonblock: str) -> list:
    from wanmoe.loading.gguf import TensorSpec
    from wanmoe.runtime.quant.apply import is_block_weight
    from wanmoe.runtime.quant.estimate import gguf_float_type
    from wanmoe.runtime.quant.gguf_dequant import FLOAT_DTYPES
    from wanmoe.runtime.quant.quantize import quantize_q8_0

    specs = []
    for name, key in names.items():
        shape, load = tuple(src.shape(key)), _loader(src, key)
        if is_block_weight(name, shape) and shape[-1] % 32 == 0:
            specs.append(TensorSpec(name, shape, "Q8_0", lambda load=load: quantize_q8_0(load())))
            continue
        qtype = gguf_float_type(name, shape, "BF16" if src.dtype(key) == torch.bfloat16 else nonblock)
        dt = FLOAT_DTYPES[qtype]
        specs.append(TensorSpec(name, shape, qtype, lambda load=load, dt=dt: load().to(dt)))
    return specs


# ---- writers -------------------------------------------------------------------------------

def write_safetensors_stream(path: Path, outs: list[_Out], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors one at a time in the safetensors format (header first); atomic rename."""
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for o in outs:
        n = o.dtype.itemsize * math.prod(o.shape)
        header[o.name] = {"dtype": _ST_CODES[o.dtype], "shape": list(o.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data block starts 8-byte aligned
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(len(blob).to_bytes(8, "little"))
            fh.write(blob)
            for o in outs:
                t = o.produce().detach().cpu().contiguous()
                if t.dtype != o.dtype or tuple(t.shape) != o.shape:
                    raise ValueError(f"tensor {o.name!r}: produced {t.dtype} {tuple(t.shape)}, "
                                     f"planned {o.dtype} {o.shape}")
                fh.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_args(target: str, nonblock: str) -> None:
    if target not in TARGETS:
        raise InputError(f"--to {target!r} is not one of {', '.join(TARGETS)}")
    if nonblock not in ("F16", "F32"):
        raise InputError(f"GGUF non-block dtype {nonblock!r} is not one of F16, F32")


def convert_expert(src_path: str | Path, out_path: str | Path, target: str, nonblock: str = "F16") -> Path:
    """Convert one DiT expert file/folder to `target`, written to `out_path` (atomically)."""
    _check_args(target, nonblock)
    src, names = _open_dit(Path(src_path))
    try:
        meta = {"wanmoe.source": Path(src_path).name, "wanmoe.target": target}
        if target == "gguf-q8_0":
            from wanmoe.loading.gguf import write_gguf_specs

            return write_gguf_specs(out_path, _plan_gguf(src, names, nonblock), arch="wan",
                                    file_type="MOSTLY_Q8_0", metadata=meta)
        if target == "fp8":
            meta.update(FP8_METADATA)
        return write_safetensors_stream(Path(out_path), _plan_safetensors(src, names, target), meta)
    finally:
        src.close()


def _suffix(target: str) -> str:
    return ".gguf" if target.startswith("gguf") else ".safetensors"


def output_paths(src: Path, target: str, out: Path | None) -> dict[str, tuple[Path, Path]]:
    """Expert name -> (source path, output file) for a conversion."""
    experts = expert_paths(src)
    ext, tag = _suffix(target), target.replace("gguf-", "").upper() if target.startswith("gguf") else target
    if len(experts) == 1 and not (out is not None and out.is_dir()):
        (name, path), = experts.items()
        dest = out if out is not None else src.parent / f"{_stem(src)}-{tag}{ext}"
        if dest.suffix != ext:
            raise InputError(f"--out {dest} must end in {ext} for --to {target}")
        return {name: (path, dest)}
    folder = out if out is not None else src.parent / f"{src.name}-{tag}"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file, but {src} has {len(experts)} experts "
                         f"({', '.join(experts)}); give a folder to write one file per expert into")
    return {name: (path, folder / f"{name}{ext}") for name, path in experts.items()}


def convert(src: str | Path, target: str, out: str | Path | None = None, nonblock: str = "F16",
            overwrite: bool = False) -> list[Path]:
    """Convert every expert of SRC; returns the written files.

    All or nothing: each expert is written to `<dest>.staged` first and the outputs are renamed
    into place only when every expert has converted; a failure removes the staged files and
    any output folder this call created.
    """
    _check_args(target, nonblock)
    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"checkpoint path {src} does not exist")
    plan = output_paths(src, target, None if out is None else Path(out))
    for _, dest in plan.values():
        if dest.exists() and not overwrite:
            raise InputError(f"{dest} already exists; pass --overwrite or choose another --out")
    staged: list[tuple[Path, Path]] = []
    created = _missing_dirs({dest.parent for _, dest in plan.values()})
    try:
        for path, dest in plan.values():
            dest.parent.mkdir(parents=True, exist_ok=True)
            staged.append((convert_expert(path, dest.with_name(dest.name + ".staged"), target, nonblock), dest))
        for tmp, dest in staged:
            os.replace(tmp, dest)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return [dest for _, dest in staged]


def _missing_dirs(folders) -> list[Path]:
    """The folders (and their ancestors) that do not exist yet, deepest first."""
    missing = set()
    for folder in folders:
        while not folder.exists() and folder != folder.parent:
            missing.add(folder)
            folder = folder.parent
    return sorted(missing, key=lambda d: len(d.parts), reverse=True)


def _run(args) -> int:
    for p in convert(args.src, args.to, args.out, args.gguf_nonblock.upper(), args.overwrite):
        print(p)
    return 0


def register_cli(subparsers) -> None:
    """Add `wanmoe convert` (sets `func`, called with the parsed args, returns the exit code)."""
    p = subparsers.add_parser("convert", help="convert DiT expert weights to bf16, scaled fp8 or GGUF Q8_0",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="DiT file / shard folder, or a checkpoint folder (one file per expert)")
    p.add_argument("--to", required=True, choices=TARGETS, help="output format")
    p.add_argument("--out", type=Path, help="output file (one expert) or folder (default: beside SRC)")
    p.add_argument("--gguf-nonblock", choices=["f16", "f32"], default="f16",
                   help="GGUF dtype of the unquantised non-block 2-D tensors (default f16, as city96)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_run)
