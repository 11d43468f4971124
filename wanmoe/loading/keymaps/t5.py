"""umT5 encoder names: HF `UMT5EncoderModel` (diffusers `text_encoder/`) <-> official Wan names.

Declarative pairs; `{i}` is the block index. HF ties `encoder.embed_tokens.weight` to
`shared.weight` (checkpoints normally store it once); both map onto `token_embedding.weight`,
and the official -> HF direction gives the stored name `shared.weight`. Source: formats.md §2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from wanmoe.errors import CheckpointError
from wanmoe.loading.renames import apply_rules, compile_rules

# (HF name, official name)
T5_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("shared.weight", "token_embedding.weight"),
    ("encoder.block.{i}.layer.0.layer_norm.weight", "blocks.{i}.norm1.weight"),
    ("encoder.block.{i}.layer.0.SelfAttention.q.weight", "blocks.{i}.attn.q.weight"),
    ("encoder.block.{i}.layer.0.SelfAttention.k.weight", "blocks.{i}.attn.k.weight"),
    ("encoder.block.{i}.layer.0.SelfAttention.v.weight", "blocks.{i}.attn.v.weight"),
    ("encoder.block.{i}.layer.0.SelfAttention.o.weight", "blocks.{i}.attn.o.weight"),
    ("encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
     "blocks.{i}.pos_embedding.embedding.weight"),
    ("encoder.block.{i}.layer.1.layer_norm.weight", "blocks.{i}.norm2.weight"),
    ("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight", "blocks.{i}.ffn.gate.0.weight"),
    ("encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight", "blocks.{i}.ffn.fc1.weight"),
    ("encoder.block.{i}.layer.1.DenseReluDense.wo.weight", "blocks.{i}.ffn.fc2.weight"),
    ("encoder.final_layer_norm.weight", "norm.weight"),
)
# HF aliases that duplicate a stored tensor: alias -> the name it is tied to
HF_TIED: dict[str, str] = {"encoder.embed_tokens.weight": "shared.weight"}


_HF_TO_OFF = compile_rules(T5_KEY_PAIRS)
_OFF_TO_HF = compile_rules((off, hf) for hf, off in T5_KEY_PAIRS)


def _rename(name: str, rules, layout: str, example: str) -> str:
    renamed = apply_rules(name, rules)
    if renamed is None:
        raise CheckpointError(
            f"tensor {name!r} is not a known {layout} umT5 encoder name (expected names such as "
            f"{example!r}, {{i}} a block index; full list in wanmoe/loading/keymaps/t5.py); "
            f"is this a umT5 encoder checkpoint?")
    return renamed


def hf_to_official(name: str) -> str:
    """`encoder.block.3.layer.1.DenseReluDense.wi_0.weight` -> `blocks.3.ffn.gate.0.weight`."""
    return _rename(HF_TIED.get(name, name), _HF_TO_OFF, "HF UMT5EncoderModel", T5_KEY_PAIRS[1][0])


def official_to_hf(name: str) -> str:
    """`blocks.3.ffn.fc2.weight` -> `encoder.block.3.layer.1.DenseReluDense.wo.weight`."""
    return _rename(name, _OFF_TO_HF, "official", T5_KEY_PAIRS[1][1])


to_official = hf_to_official  # the per-layout entry point named in docs/architecture.md

V = TypeVar("V")


def hf_state_to_official_names(state: Mapping[str, V]) -> dict[str, V]:
    """Rename a HF name -> value mapping; the tied alias is dropped when its target is present."""
    out: dict[str, V] = {}
    for name, value in state.items():
        if name in HF_TIED and HF_TIED[name] in state:
            continue  # same tensor as shared.weight
        out[hf_to_official(name)] = value
    return out
