"""umT5 encoder names: llama.cpp GGUF (`t5encoder` / `t5` architecture) <-> official Wan names.

The umT5-XXL encoder GGUF files people use with Wan (city96/umt5-xxl-encoder-gguf and the like,
made with llama.cpp's converter and `llama-quantize`) name tensors after llama.cpp's T5 tensor
table (gguf-py `constants.py`, MODEL_ARCH.T5ENCODER). Declarative pairs; `{i}` is the block
index. Facts and sources: docs/loading.md "umT5 encoder GGUF files".

An encoder-decoder `t5` file also holds `dec.*` tensors and `output.weight` (the LM head): the
encoder does not use them, `official_name` answers None for them (skipped on load).
"""

from __future__ import annotations

from collections.abc import Iterable

from wanmoe.errors import CheckpointError
from wanmoe.loading.renames import apply_rules, compile_rules

# (llama.cpp GGUF name, official name)
GGUF_T5_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("token_embd.weight", "token_embedding.weight"),
    ("enc.blk.{i}.attn_norm.weight", "blocks.{i}.norm1.weight"),
    ("enc.blk.{i}.attn_q.weight", "blocks.{i}.attn.q.weight"),
    ("enc.blk.{i}.attn_k.weight", "blocks.{i}.attn.k.weight"),
    ("enc.blk.{i}.attn_v.weight", "blocks.{i}.attn.v.weight"),
    ("enc.blk.{i}.attn_o.weight", "blocks.{i}.attn.o.weight"),
    ("enc.blk.{i}.attn_rel_b.weight", "blocks.{i}.pos_embedding.embedding.weight"),
    ("enc.blk.{i}.ffn_norm.weight", "blocks.{i}.norm2.weight"),
    ("enc.blk.{i}.ffn_gate.weight", "blocks.{i}.ffn.gate.0.weight"),
    ("enc.blk.{i}.ffn_up.weight", "blocks.{i}.ffn.fc1.weight"),
    ("enc.blk.{i}.ffn_down.weight", "blocks.{i}.ffn.fc2.weight"),
    ("enc.output_norm.weight", "norm.weight"),
)
# tensors of a full encoder-decoder file that the encoder does not use
SKIPPED_PREFIXES: tuple[str, ...] = ("dec.",)
SKIPPED_NAMES: frozenset[str] = frozenset({"output.weight"})
# what marks such a file (names after the container's prefix, if any)
MARKERS: frozenset[str] = frozenset({"token_embd.weight", "enc.blk.0.attn_q.weight", "enc.output_norm.weight"})
# llama.cpp architecture names of T5 GGUF files (`general.architecture`)
ARCHITECTURES: tuple[str, ...] = ("t5encoder", "t5")

_TO_OFF = compile_rules(GGUF_T5_KEY_PAIRS)
_TO_GGUF = compile_rules((off, g) for g, off in GGUF_T5_KEY_PAIRS)


def is_skipped(name: str) -> bool:
    """True for decoder / LM-head tensors of a full T5 file (not part of the encoder)."""
    return name in SKIPPED_NAMES or name.startswith(SKIPPED_PREFIXES)


def official_name(name: str) -> str | None:
    """`enc.blk.3.ffn_up.weight` -> `blocks.3.ffn.fc1.weight`; None for decoder tensors."""
    if is_skipped(name):
        return None
    renamed = apply_rules(name, _TO_OFF)
    if renamed is None:
        raise CheckpointError(
            f"tensor {name!r} is not a known llama.cpp T5 encoder name (expected names such as "
            f"{GGUF_T5_KEY_PAIRS[2][0]!r}, {{i}} a block index; full list in "
            "wanmoe/loading/keymaps/t5_gguf.py); is this a umT5 encoder GGUF?")
    return renamed


def gguf_name(official: str) -> str:
    """`blocks.3.ffn.fc1.weight` -> `enc.blk.3.ffn_up.weight` (what a GGUF writer names it)."""
    renamed = apply_rules(official, _TO_GGUF)
    if renamed is None:
        raise CheckpointError(f"{official!r} is not an official umT5 encoder tensor name")
    return renamed


def gguf_names(official_names: Iterable[str]) -> list[str]:
    """The llama.cpp names of a model's official tensor names, in order."""
    return [gguf_name(n) for n in official_names]
