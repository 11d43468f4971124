"""Reading LoRA files in every layout people download into patches on official module paths.

Layouts (spec formats.md §5), all with or without a wrapper prefix:

* diffusers / PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight` / `lora_B` (diffusers names)
* Comfy / non-diffusers (Kijai, lightx2v, Wan2.2-Lightning): `diffusion_model.blocks.0.self_attn.q.
  lora_down.weight` / `lora_up` + `.alpha`, or `lora_A` / `lora_B`
* musubi-tuner / kohya: `lora_unet_blocks_0_self_attn_q.lora_down.weight` (+ `.alpha`)
* SimpleTuner lycoris: `lycoris_blocks_0_self_attn_q.lora_down.weight`
* raw PEFT saves: `base_model.model.<name>.lora_A.weight` (or `lora_A.default.weight`)
* full deltas: `<module>.diff` (weight), `<module>.diff_b` (bias), `blocks.N.diff_m` (modulation)

Underscored names (`lora_unet_`, `lycoris_`) are resolved by looking them up among the model's own
module names with dots replaced, never by replacing underscores (`self_attn` has one). A file's
names are read either as official or as diffusers names, whichever matches more of its keys
(diffusers names go through the DiT key map). Wan2.1 image keys (`k_img`, `v_img`, `img_emb`)
have no layer in Wan2.2 T2V and are skipped with a note.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch

from wanmoe.errors import CheckpointError
from wanmoe.loading.keymaps.dit import official_to_diffusers  # the one import of the key map
from wanmoe.lora.patch import LoRAPatch

# (key suffix, role); a suffix that ends another one comes first
SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_B.bias", "diff_b"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)
# Adapter kinds whose math is not a plain low-rank product: refused by name, never misapplied.
UNSUPPORTED = {".dora_scale": "DoRA", ".lora_mid.weight": "LoCon (Tucker mid)",
               ".hada_w1_a": "LoHa", ".hada_w1_b": "LoHa", ".hada_w2_a": "LoHa",
               ".hada_w2_b": "LoHa", ".lokr_w1": "LoKr", ".lokr_w2": "LoKr", ".lokr_w1_a": "LoKr",
               ".lokr_w2_a": "LoKr", ".a1.weight": "GLoRA"}
# Wrapper prefixes: (prefix, underscored names?). base_model.model. may wrap any of the others.
PREFIXES: tuple[tuple[str, bool], ...] = (
    ("model.diffusion_model.", False), ("diffusion_model.", False), ("transformer.", False),
    ("lora_unet_", True), ("lora_transformer_", True), ("lycoris_", True), ("model.", False),
)
PEFT_PREFIX = "base_model.model."
IMAGE_MARKERS = ("k_img", "v_img", "img_emb", "add_k_proj", "add_v_proj", "image_embedder",
                 "norm_added_k")
FAMILIES = {"transformer.": "diffusers/PEFT", "diffusion_model.": "comfy/non-diffusers",
            "model.diffusion_model.": "comfy/non-diffusers", "lora_unet_": "musubi/kohya",
            "lora_transformer_": "musubi/kohya", "lycoris_": "lycoris", "model.": "comfy/non-diffusers",
            "": "bare"}


@dataclass(frozen=True)
class LoRAKey:
    """One tensor name split into wrapper prefix, module part and role."""

    key: str
    prefix: str        # e.g. "diffusion_model.", "base_model.model.transformer.", ""
    module: str        # module part as written (dotted or underscored)
    role: str          # down | up | alpha | diff | diff_b | diff_m
    underscored: bool


@dataclass(frozen=True)
class LoRAReport:
    """What a load matched, skipped and could not place."""

    source: str
    layout: str
    naming: str                         # "official" | "diffusers"
    targets: int
    used: int                           # tensors applied
    unmatched: tuple[str, ...] = ()
    skipped_image: tuple[str, ...] = ()

    def message(self) -> str | None:
        """The one warning text of a partial load (None when every key was used)."""
        parts = []
        if self.unmatched:
            ex = ", ".join(self.unmatched[:3])
            parts.append(f"{len(self.unmatched)} of {self.used + len(self.unmatched) + len(self.skipped_image)} "
                         f"tensors match no layer of this model and are ignored (e.g. {ex})")
        if self.skipped_image:
            parts.append(f"{len(self.skipped_image)} Wan2.1 image-conditioning tensors (k_img/v_img/"
                         f"img_emb) skipped: Wan2.2 T2V has no such layers")
        if not parts:
            return None
        return f"LoRA {self.source}: {self.targets} layers patched; " + "; ".join(parts)


@dataclass(frozen=True)
class LoRASet:
    """A parsed LoRA file: one patch per official module path, at strength 1."""

    source: str
    patches: Mapping[str, LoRAPatch] = field(repr=False)
    report: LoRAReport

    def __len__(self) -> int:
        return len(self.patches)

    def scaled(self, strength: float) -> dict[str, LoRAPatch]:
        return {m: p.with_strength(strength) for m, p in self.patches.items()}


class LoRAWarning(UserWarning):
    """A LoRA loaded only in part (keys for layers this model lacks)."""


# ---- reading -----------------------------------------------------------------------------------

def read_state(path_or_state) -> tuple[str, dict[str, torch.Tensor]]:
    """(source name, tensors) from a .safetensors / .pt path or an in-memory state dict."""
    if isinstance(path_or_state, Mapping):
        return "<state dict>", dict(path_or_state)
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"LoRA file {str(path)!r} does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"LoRA file {str(path)!r} cannot be read: {e}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"LoRA file {str(path)!r} is not a flat name -> tensor state dict")
    return str(path), dict(state)


def split_key(key: str) -> LoRAKey | None:
    """Prefix, module part and role of one tensor name (None: not a LoRA tensor name)."""
    role = module = None
    for suffix, r in SUFFIXES:
        if key.endswith(suffix):
            role, module = r, key[: -len(suffix)]
            break
    if role is None:
        return None
    prefix = ""
    if module.startswith(PEFT_PREFIX):
        prefix, module = PEFT_PREFIX, module[len(PEFT_PREFIX):]
    underscored = False
    for pre, us in PREFIXES:
        if module.startswith(pre):
            prefix, module, underscored = prefix + pre, module[len(pre):], us
            break
    return LoRAKey(key, prefix, module, role, underscored)


def _unsupported(keys: Iterable[str]) -> tuple[str, str] | None:
    for k in keys:
        for suffix, kind in UNSUPPORTED.items():
            if k.endswith(suffix):
                return k, kind
    return None


# ---- name resolution against the model --------------------------------------------------------

class ModuleIndex:
    """The model's parameter names, with its module paths in both namings, dotted and underscored."""

    def __init__(self, model_keys: Iterable[str] | Mapping[str, tuple]) -> None:
        self.shapes = dict(model_keys) if isinstance(model_keys, Mapping) else None
        self.params = set(model_keys)
        modules = {k.rsplit(".", 1)[0] for k in self.params if "." in k}
        self.dotted = {"official": {m: m for m in modules}, "diffusers": {}}
        for k in self.params:
            if not k.endswith((".weight", ".bias")):
                continue
            try:
                d = official_to_diffusers(k)
            except CheckpointError:
                continue  # a name the key map does not know has no diffusers spelling
            self.dotted["diffusers"][d.rsplit(".", 1)[0]] = k.rsplit(".", 1)[0]
        self.underscored = {n: _underscore_table(t) for n, t in self.dotted.items()}

    def resolve(self, k: LoRAKey, naming: str) -> tuple[str, str] | None:
        """(official module path, parameter) the key's role applies to, or None."""
        table = (self.underscored if k.underscored else self.dotted)[naming]
        module = table.get(k.module)
        if module is None:
            # `.diff` on a bare parameter (`blocks.0.modulation.diff`): the module is its owner
            owner, _, leaf = k.module.rpartition(".")
            if k.role == "diff" and not k.underscored and naming == "official" and k.module in self.params:
                return owner, leaf
            return None
        if k.role == "diff_m":
            param = "modulation"
        elif k.role == "diff_b":
            param = "bias"
        else:
            param = "weight"
        return (module, param) if f"{module}.{param}" in self.params else None


def _underscore_table(dotted: Mapping[str, str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for written, official in dotted.items():
        u = written.replace(".", "_")
        if u in table and table[u] != official:
            table[u] = None  # two modules collapse to one underscored name: refuse to guess
        else:
            table[u] = official
    return {u: m for u, m in table.items() if m is not None}


def _is_image_key(module: str) -> bool:
    return any(marker in module for marker in IMAGE_MARKERS)


# ---- loading -----------------------------------------------------------------------------------

def load_lora(path_or_state_dict, model_keys: Iterable[str] | Mapping[str, tuple],
              source: str | None = None) -> LoRASet:
    """Parse a LoRA file (or state dict) into patches on the official DiT names in `model_keys`.

    `model_keys`: the official parameter names of the target DiT (a name -> shape mapping also
    checks shapes here rather than at merge time). A LoRA matching no layer raises
    CheckpointError naming the file; a partial match warns once (LoRAWarning) with counts and
    examples, and `LoRASet.report` keeps the full lists.
    """
    name, state = read_state(path_or_state_dict)
    source = source or name
    if not state:
        raise CheckpointError(f"LoRA {source} holds no tensors")
    bad = _unsupported(state)
    if bad:
        raise CheckpointError(f"LoRA {source}: tensor {bad[0]!r} belongs to a {bad[1]} adapter, which "
                              f"wanmoe does not apply; supported: LoRA pairs (lora_A/B, lora_down/up "
                              f"+ alpha) and full deltas (diff, diff_b, diff_m)")
    index = ModuleIndex(model_keys)
    parsed = {k: split_key(k) for k in state}
    lora_keys = [p for p in parsed.values() if p is not None]
    naming = _choose_naming(lora_keys, index)
    targets: dict[str, dict[str, str]] = {}  # official module -> role -> tensor name
    params: dict[str, str] = {}  # official module -> the parameter its weight deltas go to
    unmatched = [k for k, p in parsed.items() if p is None and not _is_image_key(k)]
    image = [k for k, p in parsed.items() if _is_image_key(p.module if p else k)]
    for p in lora_keys:
        if _is_image_key(p.module):
            continue
        hit = index.resolve(p, naming)
        if hit is None:
            unmatched.append(p.key)
            continue
        module, param = hit
        if p.role != "diff_b" and params.setdefault(module, param) != param:
            raise CheckpointError(f"LoRA {source}: module {module!r} gets deltas for two parameters "
                                  f"({params[module]}, {param})")
        roles = targets.setdefault(module, {})
        role = "diff" if p.role == "diff_m" else p.role  # both are the parameter's full delta
        if role in roles:
            raise CheckpointError(f"LoRA {source}: {roles[role]!r} and {p.key!r} are both the "
                                  f"{role} tensor of {module!r}")
        roles[role] = p.key
    patches = _build_patches(targets, params, state, source, index)
    used = sum(len(roles) for roles in targets.values())
    report = LoRAReport(source, _family(lora_keys), naming, len(patches), used,
                        tuple(sorted(unmatched)), tuple(sorted(image)))
    if not patches:
        ex = ", ".join(sorted(state)[:3])
        raise CheckpointError(f"LoRA {source}: none of its {len(state)} tensors matches a layer of this "
                              f"DiT (e.g. {ex}); expected official (`diffusion_model.blocks.0.self_attn.q"
                              f".lora_down.weight`), diffusers (`transformer.blocks.0.attn1.to_q.lora_A."
                              f"weight`) or musubi (`lora_unet_blocks_0_self_attn_q.lora_down.weight`) names")
    msg = report.message()
    if msg:
        warnings.warn(msg, LoRAWarning, stacklevel=2)
    return LoRASet(source, patches, report)


def _choose_naming(keys: list[LoRAKey], index: ModuleIndex) -> str:
    counts = {n: sum(index.resolve(k, n) is not None for k in keys) for n in ("official", "diffusers")}
    return "diffusers" if counts["diffusers"] > counts["official"] else "official"


def _build_patches(targets: dict, params: dict, state: dict, source: str,
                   index: ModuleIndex) -> dict[str, LoRAPatch]:
    """One LoRAPatch per module from the tensors collected for it."""
    patches = {}
    for module, roles in targets.items():
        t = {r: state[k] for r, k in roles.items()}
        for r, tensor in t.items():
            if r != "alpha" and not tensor.is_floating_point():
                raise CheckpointError(f"LoRA {source}: tensor {roles[r]!r} is {tensor.dtype}, not a float")
        if ("up" in t) != ("down" in t):
            have, miss = ("up", "down") if "up" in t else ("down", "up")
            raise CheckpointError(f"LoRA {source}: {roles[have]!r} has no matching {miss} factor")
        if "up" in t and t["up"].shape[1] != t["down"].shape[0]:
            raise CheckpointError(f"LoRA {source}: {module!r} up {list(t['up'].shape)} and down "
                                  f"{list(t['down'].shape)} disagree on the rank")
        weight = t.get("diff")
        if "up" not in t and weight is None and "diff_b" not in t:
            continue  # an alpha alone changes nothing
        param = params.get(module, "weight")
        alpha = float(t["alpha"].reshape(-1)[0].item()) if "alpha" in t else None
        patch = LoRAPatch(module, param, up=t.get("up"), down=t.get("down"), alpha=alpha, diff=weight,
                          diff_b=t.get("diff_b"), source=source)
        _check_shapes(patch, index)
        patches[module] = patch
    return patches


def _check_shapes(p: LoRAPatch, index: ModuleIndex) -> None:
    if index.shapes is None:
        return
    want = tuple(index.shapes[p.target])
    got = p.weight_shape
    if got is not None and got != want and not (p.diff is None and got[0] == want[0]
                                                and torch.Size(got).numel() == torch.Size(want).numel()):
        raise CheckpointError(f"LoRA {p.source}: delta for {p.target!r} has shape {list(got)}, the "
                              f"model's {list(want)}; the LoRA is for another model size")
    bias = index.shapes.get(f"{p.module}.bias")
    if p.diff_b is not None and (bias is None or tuple(bias) != tuple(p.diff_b.shape)):
        raise CheckpointError(f"LoRA {p.source}: bias delta for {p.module!r} has shape "
                              f"{list(p.diff_b.shape)}, the model's bias {bias}")


def _family(keys: list[LoRAKey]) -> str:
    prefixes = Counter(k.prefix for k in keys)
    if not prefixes:
        return "unknown"
    prefix = prefixes.most_common(1)[0][0]
    if prefix.startswith(PEFT_PREFIX):
        return "peft"
    return FAMILIES.get(prefix, "bare")
