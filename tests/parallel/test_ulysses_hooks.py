"""Ulysses hooks compose with the other policies on the same hook points (no processes needed:
installing communicates nothing)."""

from __future__ import annotations

import torch

from wanmoe.models.attention import attention_reference, attention_sdpa
from wanmoe.models.dit import WanDiT, run_blocks
from wanmoe.parallel.ulysses import (UlyssesAttention, UlyssesRunner, install_ulysses,
                                     remove_ulysses)
from wanmoe.runtime.attention import set_attention, using_attention
from wanmoe.runtime.timing import time_blocks
from wanmoe.testing.tiny import tiny_dit_config


def _model():
    return WanDiT(tiny_dit_config(16))


def test_install_wraps_previous_runner_and_self_attention_only():
    model = _model()
    timer = time_blocks(model)  # a runner installed before (block streaming would be the same)
    before = model.block_runner
    install_ulysses(model, 2, 1, group=None)
    assert isinstance(model.block_runner, UlyssesRunner) and model.block_runner.previous is before
    for block in model.blocks:
        assert isinstance(block.self_attn.attn_fn, UlyssesAttention)
        assert block.cross_attn.attn_fn is attention_sdpa  # text keys: no communication
    remove_ulysses(model)
    assert model.block_runner is before and model.blocks[0].self_attn.attn_fn is attention_sdpa
    timer.remove()
    assert model.block_runner is run_blocks


def test_backend_swaps_keep_the_ulysses_wrapper():
    model = _model()
    install_ulysses(model, 2, 0, group=None)
    wrapper = model.blocks[0].self_attn.attn_fn
    with using_attention(model, "reference"):
        assert model.blocks[0].self_attn.attn_fn is wrapper
        assert wrapper.inner is attention_reference
        assert model.blocks[0].cross_attn.attn_fn is attention_reference
    assert wrapper.inner is attention_sdpa and model.blocks[0].cross_attn.attn_fn is attention_sdpa
    set_attention(model, "reference")
    assert model.blocks[1].self_attn.attn_fn.inner is attention_reference


def test_runner_shards_pad_rows_like_the_official_split(monkeypatch):
    """27 tokens over U=2: padded to 28, rank 1 holds rows 14..27 (the last one padding);
    RoPE padding rows are the identity rotation."""
    seen = {}

    def spy(blocks, h, e0, context, rope, k_lens, lowp):
        seen.update(h=h, e0=e0, rope=rope, k_lens=k_lens)
        return h

    runner = UlyssesRunner(spy, 2, 1, group=None)
    h = torch.arange(27.0).view(1, 27, 1).expand(1, 27, 4)
    e0 = torch.arange(27.0).view(1, 27, 1, 1).expand(1, 27, 6, 4)
    rope = torch.full((27, 3), 2 + 0j, dtype=torch.complex128)
    # one process stands in for both ranks: every "gathered" shard is this rank's
    monkeypatch.setattr(torch.distributed, "all_gather",
                        lambda parts, t, group=None: [p.copy_(t) for p in parts])
    out = runner(None, h, e0, None, rope, None, torch.float32)
    assert seen["h"][0, :, 0].tolist() == [float(i) for i in range(14, 27)] + [0.0]
    assert seen["e0"][0, :, 0, 0].tolist()[:13] == [float(i) for i in range(14, 27)]
    assert seen["rope"][-1].tolist() == [1 + 0j] * 3 and seen["rope"][0].tolist() == [2 + 0j] * 3
    assert seen["k_lens"].tolist() == [27]  # the added row is masked as a key
    assert out.shape == h.shape  # gathered and trimmed back to 27 rows
