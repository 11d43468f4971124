"""The edge: what to generate (`GenerationRequest`) and how to run it (`RuntimeConfig`).

Both are built and validated at the edge, once, from user values (CLI flags, Python API keyword
arguments, later the server's JSON): `GenerationRequest` by `wanmoe.validate.settings_for`, the
RuntimeConfig here by `runtime_config`. The checks live in `wanmoe.validate`; nothing
below this layer validates user input again. The path of a guide scale, for example:

    cli --guide-scale -> validate.settings_for (parse_guide_scale: the one check)
      -> GenerationRequest.guide_scale -> GenerationRequest.schedule (ExpertStage.guidance)
      -> sampling.guidance.CFGDenoiser (v = v_u + g (v_c - v_u))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError
from .runtime.config import LoRAMode, OffloadMode, RuntimeConfig, WeightMode
from .validate import GenerationRequest, parse_device, parse_dtype

if TYPE_CHECKING:
    from .configs import ModelPreset


def _choice(enum_type, value, flag: str, default):
    if value is None:
        return default
    if isinstance(value, bool) and enum_type is OffloadMode:  # the old --offload / --no-offload
        return OffloadMode.EXPERT if value else OffloadMode.NONE
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)
        extra = ", blocks:N" if enum_type is OffloadMode else ""
        raise InputError(f"{flag} {value!r} is not one of {allowed}{extra}") from None


def parse_offload(value) -> tuple[OffloadMode, int]:
    """'none' | 'expert' | 'auto' | 'blocks' | 'blocks:N' (or an OffloadMode, or the old bool)
    -> (mode, resident blocks); N >= 1, default 2."""
    if isinstance(value, str) and value.startswith("blocks:"):
        n = value.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"offload {value!r}: the resident block count {n!r} must be a whole "
                             f"number >= 1 (e.g. blocks:2)")
        return OffloadMode.BLOCKS, int(n)
    return _choice(OffloadMode, value, "offload", OffloadMode.AUTO), 2


def runtime_config(device=None, dtype=None, *, weights=None, offload=None, text_device=None,
                   attention: str = "auto", batched_cfg: bool | None = None, per_token_time: bool = False,
                   lora_mode=None, cache="off", fp8_matmul: str = "dequant",
                   text_weights=None, compile: bool = False, text_kv_cache: str = "auto") -> RuntimeConfig:
    """Validate runtime choices once (device present, dtype known, modes from their enums).

    batched_cfg None (default): decided per run from the memory model on CUDA (runtime.cfg_batch),
    separate passes on CPU."""
    from .runtime.attention import BACKENDS
    from .runtime.cache import parse_cache
    from .runtime.quant.text import check_text_weights
    from .runtime.text_kv import check_mode

    dev = parse_device(device)
    dt = parse_dtype(dtype if dtype is not None else ("bf16" if dev.type == "cuda" else "fp32"))
    if attention not in BACKENDS:
        raise InputError(f"attention backend {attention!r} is not one of {', '.join(BACKENDS)}")
    for flag, value in (("batched_cfg", batched_cfg), ("per_token_time", per_token_time),
                        ("compile", compile)):
        if not isinstance(value, bool) and not (flag == "batched_cfg" and value is None):
            raise InputError(f"{flag} {value!r} must be True or False")
    from .runtime.quant.linear import FP8_MATMUL

    if fp8_matmul not in FP8_MATMUL:
        raise InputError(f"fp8 matmul {fp8_matmul!r} is not one of {', '.join(FP8_MATMUL)}")
    offload_mode, resident = parse_offload(offload)
    return RuntimeConfig(
        device=dev, dtype=dt,
        weights=_choice(WeightMode, weights, "weights", WeightMode.DEFAULT),
        offload=offload_mode, resident_blocks=resident,
        text_device=parse_device(text_device) if text_device is not None else None,
        text_weights=check_text_weights(text_weights),
        attention=attention, batched_cfg=batched_cfg, per_token_time=per_token_time,
        lora_mode=_choice(LoRAMode, lora_mode, "lora mode", LoRAMode.MERGE),
        cache=parse_cache(cache), fp8_matmul=fp8_matmul, compile=compile,
        text_kv_cache=check_mode(text_kv_cache))


def parse_lora_arg(text: str, flag: str = "--lora") -> tuple[str, float]:
    """'FILE[:STRENGTH]' -> (FILE, strength); the file must exist, the strength be finite."""
    import math
    from pathlib import Path

    path, strength = str(text), 1.0
    head, sep, tail = path.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            strength = float(tail)
        except ValueError:
            raise InputError(f"{flag} {text!r}: strength {tail!r} is not a number; "
                             f"use FILE or FILE:STRENGTH (e.g. lora.safetensors:0.8)") from None
        path = head
    if not math.isfinite(strength):
        raise InputError(f"{flag} {text!r}: strength {strength} must be a finite number")
    if not Path(path).is_file():
        raise InputError(f"{flag} {text!r}: LoRA file {path!r} does not exist")
    return path, strength


def sampling_values(preset=None, *, steps=None, shift=None, guide_scale=None, solver=None) -> dict:
    """Sampling values with a named preset's (`wanmoe.sampling.PRESETS`, e.g. lightning) filling
    the ones not given; solver default unipc. The CLI's flags and the server's JSON both go here."""
    from .sampling import PRESETS

    values = {"steps": steps, "shift": shift, "guide_scale": guide_scale, "solver": solver}
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise InputError(f"preset {preset!r} is not one of {', '.join(sorted(PRESETS))}")
        for key, value in PRESETS[preset].items():
            if values.get(key) is None:
                values[key] = value
    values["solver"] = values["solver"] or "unipc"
    return values


def lora_plan(preset: "ModelPreset", both=(), high=(), low=()) -> dict[str, list[tuple[str, float]]]:
    """LoRAs per expert name: `both` on every expert, `high`/`low` on the two-expert model's
    high- and low-noise expert. Each entry is 'FILE[:STRENGTH]' or a (file, strength) pair."""
    names = [e.name for e in preset.experts]
    if (high or low) and len(names) != 2:
        raise InputError(f"{preset.name} has one expert; use --lora (not --lora-high/--lora-low)")

    def parsed(items, flag):
        return [parse_lora_arg(x, flag) if isinstance(x, str) else parse_lora_arg(f"{x[0]}:{x[1]}", flag)
                for x in items]

    plan = {n: parsed(both, "--lora") for n in names}
    if len(names) == 2:
        plan[names[0]] += parsed(high, "--lora-high")
        plan[names[1]] += parsed(low, "--lora-low")
    return {n: specs for n, specs in plan.items() if specs}


__all__ = ["lora_plan", "sampling_values", "parse_offload", "parse_lora_arg", "GenerationRequest", "RuntimeConfig", "runtime_config", "WeightMode", "OffloadMode",
           "LoRAMode"]
