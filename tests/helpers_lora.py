"""LoRA files for the tests, written in each downloaded layout from one set of random factors.

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import torch

from wanmoe.loading.keymaps.dit import official_to_diffusers

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                 "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
EXTRA_LINEARS = ("time_projection.1", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                 "time_embedding.2", "head.head")

# layout -> (prefix, down suffix, up suffix, naming, underscored)
LAYOUTS = {
    "diffusers": ("transformer.", "lora_A.weight", "lora_B.weight", "diffusers", False),
    "comfy_AB": ("diffusion_model.", "lora_A.weight", "lora_B.weight", "official", False),
    "comfy_down_up": ("diffusion_model.", "lora_down.weight", "lora_up.weight", "official", False),
    "comfy_model": ("model.diffusion_model.", "lora_down.weight", "lora_up.weight", "official", False),
    "musubi": ("lora_unet_", "lora_down.weight", "lora_up.weight", "official", True),
    "lycoris": ("lycoris_", "lora_down.weight", "lora_up.weight", "official", True),
    "peft_official": ("base_model.model.", "lora_A.weight", "lora_B.weight", "official", False),
    "peft_diffusers": ("base_model.model.", "lora_A.default.weight", "lora_B.default.weight",
                       "diffusers", False),
    "bare": ("", "lora_A.weight", "lora_B.weight", "official", False),
}


def block_modules(num_layers: int, names=BLOCK_LINEARS) -> list[str]:
    return [f"blocks.{i}.{n}" for i in range(num_layers) for n in names]


def lora_factors(state: dict, modules, rank: int, seed: int, dtype=torch.float32) -> dict:
    """module -> (down [r, in], up [out, r]) sized from the model's weights; ΔW ~ 0.1·|W|."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modules:
        o, i = state[f"{m}.weight"].shape
        down = torch.randn(rank, i, generator=g) / i**0.5
        up = 0.1 * torch.randn(o, rank, generator=g) / rank**0.5
        out[m] = (down.to(dtype), up.to(dtype))
    return out


def module_name(module: str, naming: str, underscored: bool) -> str:
    name = module if naming == "official" else official_to_diffusers(f"{module}.weight")[: -len(".weight")]
    return name.replace(".", "_") if underscored else name


def write_layout(factors: dict, layout: str, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The factors as one layout's tensor names (alpha written per module when given)."""
    prefix, down_s, up_s, naming, us = LAYOUTS[layout]
    sd = {}
    for m, (down, up) in factors.items():
        base = prefix + module_name(m, naming, us)
        sd[f"{base}.{down_s}"] = down
        sd[f"{base}.{up_s}"] = up
        if alpha is not None:
            sd[f"{base}.alpha"] = torch.tensor(float(alpha))
    return sd


def hand_merge(weight: torch.Tensor, down, up, alpha, strength: float) -> torch.Tensor:
    """W + s·alpha/r·(up @ down) in fp32, one rounding: the reference formula written out."""
    r = down.shape[0]
    a = r if alpha is None else alpha
    return (weight.float() + (strength * (a / r)) * (up.float() @ down.float())).to(weight.dtype)
