"""Per-run cache of the text path: embedded contexts and cross-attention keys/values.

The text embedding (`WanDiT.embed_text`) and each block's cross-attention K/V (k/v projections of
the embedded context, RMSNorm on k) depend only on the context and the weights, yet a plain
denoise loop recomputes them at every step. `text_kv_cache(experts)` installs memos on the
experts for one `sample()` call and removes them at its end, so nothing outlives a generation
(LoRA changes, patches, dtype or placement changes between generations cannot see stale values).
Entries are keyed by the context tensors themselves (held and compared with `is`) and their
in-place version: the same ops on the same inputs, hence bit-identical outputs.

Memory: per expert, per context, blocks x text_len x dim x 2 (k, v) in the compute dtype, plus the
embedded context (`text_kv_bytes`). Only the active expert's entries are kept: the pipeline
calls `clear()` when the expert changes. `decide_text_kv_cache` turns RuntimeConfig's
`text_kv_cache` ("auto" | "on" | "off") into on/off for a run.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from wanmoe.errors import InputError

MODES = ("auto", "on", "off")
HEADROOM = 0.8  # of the free device memory the cache and the activations may take (auto)


def check_mode(mode) -> str:
    if mode not in MODES:
        raise InputError(f"text_kv_cache {mode!r} is not one of {', '.join(MODES)}")
    return mode


def _cross_attentions(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules()
            if name.endswith("cross_attn") and hasattr(m, "kv_memo")]


class TextKVCache:
    """The memos installed on a set of experts; `clear()` empties them, `remove()` uninstalls."""

    def __init__(self, experts: dict[str, nn.Module]) -> None:
        self.models = [m for m in experts.values() if hasattr(m, "text_memo")]
        self.attns = {id(m): _cross_attentions(m) for m in self.models}
        self.clear()

    def clear(self) -> None:
        for model in self.models:
            model.text_memo = {}
            for attn in self.attns[id(model)]:
                attn.kv_memo = {}

    def remove(self) -> None:
        for model in self.models:
            model.__dict__.pop("text_memo", None)  # back to the class default None
            for attn in self.attns[id(model)]:
                attn.__dict__.pop("kv_memo", None)

    def nbytes(self) -> int:
        total = 0
        for model in self.models:
            total += sum(e[1].nbytes for e in (model.text_memo or {}).values())
            for attn in self.attns[id(model)]:
                total += sum(e[1].nbytes + e[2].nbytes for e in (attn.kv_memo or {}).values())
        return total

    def entries(self) -> int:
        """How many K/V pairs are held (blocks x distinct contexts, all experts)."""
        return sum(len(a.kv_memo or {}) for m in self.models for a in self.attns[id(m)])


@contextmanager
def text_kv_cache(experts: dict[str, nn.Module], enabled: bool = True):
    """Install a `TextKVCache` on `experts` for the duration of the block (None when disabled)."""
    if not enabled:
        yield None
        return
    cache = TextKVCache(experts)
    try:
        yield cache
    finally:
        cache.remove()


def text_kv_bytes(dit_cfg, contexts: int, dtype: torch.dtype) -> int:
    """Bytes the cache holds for one expert: K/V of every block plus the embedded contexts."""
    per_ctx = dit_cfg.text_len * dit_cfg.dim * torch.empty(0, dtype=dtype).element_size()
    return contexts * per_ctx * (2 * dit_cfg.num_layers + 1)


def decide_text_kv_cache(mode: str, device: torch.device, compiled: bool, need_bytes: int,
                         free_bytes: int | None) -> bool:
    """on/off for a run: "on"/"off" as said; "auto": on off-CUDA (host memory is not the limit
    at these sizes), on CUDA when `need_bytes` (cache + activations) fit HEADROOM x the free
    memory; off under torch.compile (the memo lookups would break the compiled block graph)."""
    if mode == "on":
        return True
    if mode == "off" or compiled:
        return False
    if torch.device(device).type != "cuda":
        return True
    return free_bytes is not None and need_bytes <= HEADROOM * free_bytes
