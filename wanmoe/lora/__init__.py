"""wanmoe.lora: LoRA files in every downloaded layout -> patches on official module paths.

`load_lora` parses a file against the DiT's parameter names; `merge_loras` folds patches into
float weights at load (zero cost per step); `runtime_patches` hands per-linear patch lists to the
weight path (a low-rank side branch for quantised bases). One LoRA list per expert.
"""

from __future__ import annotations

from wanmoe.lora.describe import describe_lora
from wanmoe.lora.formats import LoRAReport, LoRASet, LoRAWarning, load_lora
from wanmoe.lora.patch import (LoRAPatch, linear_with_patches, merge_bias, merge_loras,
                               merge_patches, runtime_patches, scaled_patches)

__all__ = ["LoRAPatch", "LoRAReport", "LoRASet", "LoRAWarning", "describe_lora",
           "linear_with_patches", "load_lora", "merge_bias", "merge_loras", "merge_patches",
           "runtime_patches", "scaled_patches"]
