"""`wanmoe inspect PATH [PATH2] [--estimate] [--json]`: what a checkpoint is, from headers only.

A LoRA file (most tensor names are LoRA names) is described by `wanmoe.lora.describe` instead:
layout, rank(s), alpha(s), targets per module kind, naming, blocks and model width.

`detect(path)` describes any file or folder: weight files through the detection rules
(`detect.detect_file`), whole-model folders (official A14B / TI2V-5B, diffusers, wanmoe-native)
through `checkpoint.resolve_checkpoint`, which checks and names every part.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from wanmoe.errors import CheckpointError
from wanmoe.loading.checkpoint import resolve_checkpoint
from wanmoe.loading.containers import is_tokenizer_dir
from wanmoe.loading.detect import NOTE_HEADS_UNKNOWN, NOTE_ROLE_UNKNOWN, Detection, detect_file, expert_roles


def detect(path: str | Path) -> Detection:
    """Detect a checkpoint file or folder (headers only; no tensor data is read)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    if p.is_file():
        if p.name == "tokenizer.json":
            return Detection("tokenizer-json", "tokenizer", "tokenizer", path=p)
        if p.name == "wanmoe.json":
            p = p.parent
        else:
            return detect_file(p)
    if (p / "wanmoe.json").is_file():
        return _pipeline_detection(p, "wanmoe-dir")
    if (p / "model_index.json").is_file():
        return _pipeline_detection(p, "diffusers-dir")
    if (p / "high_noise_model").is_dir() and (p / "low_noise_model").is_dir():
        return _pipeline_detection(p, "official-dir-a14b")
    if (p / "config.json").is_file() and any(p.glob("models_t5_*.pth")):
        return _pipeline_detection(p, "official-dir-ti2v5b")
    if is_tokenizer_dir(p) and not any(p.glob("*.safetensors")):
        return Detection("tokenizer-dir", "tokenizer", "tokenizer", path=p)
    return detect_file(p)


def _pipeline_detection(p: Path, fmt: str) -> Detection:
    """A whole-model folder: resolve its parts and summarise them."""
    spec = resolve_checkpoint(p)
    parts = dict(spec.detections)
    for name in spec.experts:  # the folder layout says what the weights alone cannot
        d = parts.get(name)
        if d is None or d.component != "dit":
            continue
        d.notes[:] = [n for n in d.notes if not n.startswith((NOTE_ROLE_UNKNOWN, NOTE_HEADS_UNKNOWN))]
        d.notes.append(f"expert role: {name} (named by the {fmt} layout)")
        if d.dims is not None and d.dims.get("num_heads") is None:
            d.dims["num_heads"] = spec.preset.dit.num_heads
    hist: dict[str, dict[str, int]] = {}
    for d in parts.values():
        for k, v in d.dtypes.items():
            h = hist.setdefault(k, {"count": 0, "bytes": 0})
            h["count"] += v["count"]
            h["bytes"] += v["bytes"]
    dims = asdict(spec.preset.dit)
    return Detection(format=fmt, component="pipeline", model=f"Wan2.2 {spec.preset.name}", dims=dims,
                     dtypes=hist, total_bytes=sum(d.total_bytes for d in parts.values()),
                     notes=[f"experts: {', '.join(spec.experts)}"], path=p, parts=parts)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _as_dict(det: Detection) -> dict:
    d = asdict(det)
    d["path"] = str(det.path) if det.path else None
    d["parts"] = {k: _as_dict(v) for k, v in det.parts.items()}
    return d


def _lines(det: Detection, indent: str = "") -> list[str]:
    out = [f"{indent}{det.path}",
           f"{indent}  format:    {det.format}",
           f"{indent}  component: {det.component}",
           f"{indent}  model:     {det.model}"]
    if det.dims:
        out.append(f"{indent}  dims:      " + ", ".join(f"{k}={v}" for k, v in det.dims.items()))
    if det.dtypes:
        out.append(f"{indent}  dtypes:    " + ", ".join(
            f"{k} x{v['count']} ({_gb(v['bytes'])})" for k, v in det.dtypes.items()))
        out.append(f"{indent}  bytes:     {det.total_bytes:,} ({_gb(det.total_bytes)})")
    out += [f"{indent}  note:      {n}" for n in det.notes]
    for role, part in det.parts.items():
        out.append(f"{indent}  [{role}]")
        out += _lines(part, indent + "    ")
    return out


def _detect_all(path, path2=None) -> list[Detection]:
    return [detect(p) for p in (path, path2) if p is not None]


def _report(dets: list[Detection], path, path2) -> dict:
    out = {"checkpoints": [_as_dict(d) for d in dets]}
    if path2 is not None:
        roles = expert_roles(path, path2)
        out["expert_roles"] = {"high_noise": str(roles.high) if roles.high else None,
                               "low_noise": str(roles.low) if roles.low else None, "note": roles.note}
        a, b = dets
        out["same_model"] = (a.model, a.dims) == (b.model, b.dims)
    return out


def _describe(dets: list[Detection], path, path2) -> str:
    lines: list[str] = []
    for d in dets:
        lines += _lines(d)
    if path2 is not None:
        a, b = dets
        lines.append("expert roles: " + expert_roles(path, path2).note)
        if (a.model, a.dims) != (b.model, b.dims):
            lines.append(f"warning: the two files are different models ({a.model} vs {b.model})")
    return "\n".join(lines)


def _estimate(dets: list[Detection]) -> str:
    try:
        from wanmoe.runtime.quant.estimate import estimate_table
    except ImportError:
        return "memory estimate unavailable (wanmoe.runtime.quant.estimate is not installed)"
    return str(estimate_table(dets[0] if len(dets) == 1 else dets))


def inspect_paths(path, path2=None) -> dict:
    """Detections of one or two paths plus the expert roles of a pair (JSON-ready)."""
    return _report(_detect_all(path, path2), path, path2)


def describe(path, path2=None) -> str:
    """Human-readable report: format, component, model, dims, dtype histogram, bytes, roles."""
    return _describe(_detect_all(path, path2), path, path2)


def estimate_text(path, path2=None) -> str:
    """Resident-memory estimate table from the quantisation helper, when it is installed."""
    return _estimate(_detect_all(path, path2))


def _run_lora(args) -> int:
    """A LoRA file: layout, ranks, alphas, targets (`wanmoe.lora.describe`, header + alphas only)."""
    from wanmoe.lora.describe import describe_lora, describe_text

    info = describe_lora(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else describe_text(info))
    return 0


def _run(args) -> int:
    from wanmoe.lora.describe import is_lora_file

    if args.path2 is None and is_lora_file(args.path):
        return _run_lora(args)
    dets = _detect_all(args.path, args.path2)  # once, whatever is printed
    if args.json:
        out = _report(dets, args.path, args.path2)
        if args.estimate:
            out["estimate"] = _estimate(dets)
        print(json.dumps(out, indent=2, default=str))
    else:
        print(_describe(dets, args.path, args.path2))
        if args.estimate:
            print(_estimate(dets))
    return 0


def register_cli(subparsers) -> None:
    """Add the `inspect` subcommand (sets `func`, called with the parsed args, returns exit code)."""
    p = subparsers.add_parser("inspect", help="describe a checkpoint file or folder (headers only)")
    p.add_argument("path", type=Path, help="checkpoint file or folder")
    p.add_argument("path2", type=Path, nargs="?", default=None,
                   help="second expert file: also report which is high/low noise")
    p.add_argument("--estimate", action="store_true", help="also print the resident-memory estimate table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)
