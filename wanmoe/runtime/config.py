"""RuntimeConfig: how to run (device, precision, weights, offload, attention, ...), as data.

Built and validated once at the edge (`wanmoe.request.runtime_config`: the CLI, the Python
API, later the server); everything below reads it and validates nothing again. It says how a
generation runs, never what it generates (that is `wanmoe.request.GenerationRequest`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class WeightMode(str, enum.Enum):
    """How DiT block weights are stored (a str enum: `WeightMode.FP8 == "fp8"`)."""

    DEFAULT = "default"  # the storage dtypes the compute dtype needs; quantised files stay so
    BF16 = "bf16"  # block linears in bf16 even under fp32 compute (official --convert_model_dtype)
    FP8 = "fp8"  # block linears quantised to float8_e4m3fn, a scale per output channel
    INT8 = "int8"  # block linears quantised to int8, a scale per output channel
    KEEP = "keep"  # as stored in the file (scaled fp8 stays fp8, GGUF stays GGUF)

    @property
    def quantises(self) -> bool:
        """True when the mode quantises float weights (tensor by tensor while loading)."""
        return self in (WeightMode.FP8, WeightMode.INT8)

    @property
    def converts(self) -> bool:
        """True when loaded block weights are converted (bf16 / fp8 / int8)."""
        return self in (WeightMode.BF16, WeightMode.FP8, WeightMode.INT8)


class OffloadMode(str, enum.Enum):
    """Where expert weights live between their steps."""

    AUTO = "auto"  # EXPERT on CUDA when all experts take more than half of the GPU, else NONE
    NONE = "none"  # every expert resident on the device
    EXPERT = "expert"  # only the active expert on the device, the others on the CPU
    BLOCKS = "blocks"  # blocks streamed from host memory, `resident_blocks` on the device


class LoRAMode(str, enum.Enum):
    """How LoRA patches reach the weights."""

    MERGE = "merge"  # added into float weights at load (quantised bases fall back to RUNTIME)
    RUNTIME = "runtime"  # a side branch per call: the base weights stay untouched


@dataclass(frozen=True)
class RuntimeConfig:
    """Validated runtime choices; see `wanmoe.request.runtime_config` for the edge builder."""

    device: torch.device
    dtype: torch.dtype  # DiT compute dtype: torch.float32 or torch.bfloat16
    weights: WeightMode = WeightMode.DEFAULT
    offload: OffloadMode = OffloadMode.AUTO
    resident_blocks: int = 2  # OffloadMode.BLOCKS: blocks on the device at once (--offload blocks:N)
    text_device: torch.device | None = None  # None: the device
    text_weights: str | None = None  # umT5 block linears: None = as stored, "fp8" / "int8" (--text-weights)
    attention: str = "auto"  # a wanmoe.runtime.attention backend name
    batched_cfg: bool | None = False  # cond + uncond as one batch of 2; None: when memory allows (runtime.cfg_batch)
    per_token_time: bool = False  # the official per-token time embedding (WanDiT.set_per_token_time)
    lora_mode: LoRAMode = LoRAMode.MERGE
    fp8_matmul: str = "dequant"  # fp8 layers: dequant | scaled | auto (runtime.quant.linear.fp8_path)
    compile: bool = False  # torch.compile per DiT block (wanmoe.runtime.compile), eager on failure
    cache: object | None = None  # a runtime.cache.CacheSpec; None = off
    parallel: object | None = None  # a wanmoe.parallel.plan.ParallelPlan (None: one process)
    text_kv_cache: str = "auto"  # text embedding + cross-attn K/V kept per run: auto | on | off (runtime.text_kv)

    @property
    def encoder_device(self) -> torch.device:
        return self.text_device or self.device
