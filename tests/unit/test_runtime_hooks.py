"""Hook points of the policy-free DiT: the block runner and per-module attention (runtime layer)."""

import pytest
import torch
from helpers_dit import TINY

from wanmoe.errors import InputError
from wanmoe.models.dit import WanDiT, run_blocks
from wanmoe.request import runtime_config
from wanmoe.runtime.config import LoRAMode, OffloadMode, WeightMode
from wanmoe.runtime.timing import time_blocks


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, TINY.in_dim, 2, 4, 4, generator=g)
    return x, torch.tensor([900, 100]), [torch.randn(5, TINY.text_dim, generator=g)] * 2


@torch.no_grad()
def test_timing_hook_in_one_file_changes_nothing():
    torch.manual_seed(0)
    model = WanDiT(TINY).eval()
    x, t, ctx = _inputs()
    plain = model(x, t, ctx)
    timer = time_blocks(model)
    timed = model(x, t, ctx)
    model(x, t, ctx)
    timer.remove()
    assert torch.equal(timed, plain)
    assert dict(timer.calls) == {i: 2 for i in range(TINY.num_layers)}
    assert all(s > 0 for s in timer.seconds.values())
    assert model.block_runner is run_blocks


@torch.no_grad()
def test_block_runner_sees_every_block_and_can_replace_the_loop():
    torch.manual_seed(0)
    model = WanDiT(TINY).eval()
    x, t, ctx = _inputs()
    ref = model(x, t, ctx)

    seen = []

    def indexed(blocks, h, *args):  # another loop over the same blocks (as a streamer would run)
        for i in range(len(blocks)):
            seen.append(i)
            h = blocks[i](h, *args)
        return h

    model.block_runner = indexed
    assert torch.equal(model(x, t, ctx), ref) and seen == list(range(TINY.num_layers))
    model.block_runner = lambda blocks, h, *args: h  # skipping every block changes the output
    assert not torch.equal(model(x, t, ctx), ref)


def test_model_metadata_is_the_one_source():
    from wanmoe.runtime.quant.apply import block_linears

    model = WanDiT(TINY)
    names = [n for n, _ in block_linears(model)]
    assert len(names) == 10 * TINY.num_layers  # q/k/v/o x 2 + ffn.0/ffn.2 per block
    assert all(model.meta.is_quantisable(n) for n in names)
    assert not model.meta.is_quantisable("head.head") and not model.meta.is_quantisable("blocks.0.norm3")
    assert WanDiT.storage_dtype("blocks.0.ffn.0.weight", torch.bfloat16) == torch.bfloat16
    assert WanDiT.storage_dtype("blocks.0.modulation", torch.bfloat16) == torch.float32
    assert getattr(model, model.meta.repeated) is model.blocks


def test_runtime_config_is_validated_once_at_the_edge():
    rt = runtime_config("cpu", weights="fp8", offload=True, lora_mode="runtime")
    assert rt.dtype == torch.float32 and rt.weights is WeightMode.FP8 and rt.weights == "fp8"
    assert rt.offload is OffloadMode.EXPERT and rt.lora_mode is LoRAMode.RUNTIME
    assert runtime_config("cpu", offload=False).offload is OffloadMode.NONE
    assert runtime_config("cpu").weights is WeightMode.DEFAULT
    with pytest.raises(Exception):
        rt.dtype = torch.bfloat16  # frozen
    for kwargs, words in ((dict(weights="fp4"), "weights 'fp4'"), (dict(offload="layers"), "offload"),
                          (dict(attention="xformers"), "attention backend"),
                          (dict(batched_cfg="yes"), "batched_cfg"), (dict(dtype="fp16"), "dtype")):
        with pytest.raises(InputError, match=words):
            runtime_config("cpu", **kwargs)
