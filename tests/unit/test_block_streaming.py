"""runtime.streaming: blocks streamed through N device slots give bit-identical DiT outputs.

On this CPU machine the "device" is host memory: the streamer still copies every block into
its ring slot and re-points the block's tensors there, so a slot holding the wrong block, a
tensor left out of the copy or a refill that lands too early changes the output.
"""

import pytest
import torch

from wanmoe.configs import DiTConfig
from wanmoe.lora.patch import LoRAPatch
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.quant.apply import block_linears, quantize_model
from wanmoe.runtime.quant.linear import DequantWorkspace, GGUFLinear
from wanmoe.runtime.streaming import BlockStreamer, BlockStreaming, SlotRing
from wanmoe.runtime.weights import attach_patches, set_module

CFG = DiTConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=3, in_dim=4, out_dim=4, text_dim=64,
                text_len=16)


def _model(fmt: str, seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(CFG)
    model.init_weights()
    with torch.no_grad():  # a non-zero head, so the output depends on every block
        model.head.head.weight.normal_(0, 0.02)
    dtype = torch.bfloat16 if fmt == "bf16" else torch.float32
    if fmt in ("bf16", "fp8", "int8"):
        quantize_model(model, fmt)
    elif fmt == "gguf":
        from gguf import GGMLQuantizationType, quants

        from wanmoe.runtime.quant.gguf_dequant import GGUFWeight

        ws = DequantWorkspace()
        for name, lin in list(block_linears(model)):
            raw = quants.quantize(lin.weight.detach().numpy(), GGMLQuantizationType.Q8_0)
            q = GGUFWeight(torch.from_numpy(raw), "Q8_0", tuple(lin.weight.shape))
            set_module(model, name, GGUFLinear(q, lin.bias, ws))
    elif fmt == "lora":
        g = torch.Generator().manual_seed(1)
        patches = {f"blocks.{b}.ffn.0": [LoRAPatch(f"blocks.{b}.ffn.0", up=0.1 * torch.randn(256, 4, generator=g),
                                                   down=torch.randn(4, 128, generator=g) / 16, alpha=2.0)]
                   for b in range(CFG.num_layers)}
        attach_patches(model, patches)
    return model.set_compute_dtype(dtype).eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    return x, torch.tensor([700]), [torch.randn(7, 64, generator=g)]


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp8", "int8", "gguf", "lora"])
def test_streamed_forward_is_bit_identical(fmt):
    model = _model(fmt)
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = model(x, t, ctx)
        for n in (2, 4):  # fewer and more slots than blocks
            ring = SlotRing(torch.device("cpu"), n)
            streamer = BlockStreamer(model, ring)
            assert torch.equal(model(x, t, ctx), ref), (fmt, n)
            assert torch.equal(model(x, t, ctx), ref), (fmt, n)  # a second forward refills the ring
            assert len([s for s in ring.slots if s]) == min(n, CFG.num_layers)
            ring.clear()
            streamer.remove()
        assert torch.equal(model(x, t, ctx), ref)


def test_blocks_run_from_their_slot_and_every_tensor_moves():
    model = _model("int8")
    ring = SlotRing(torch.device("cpu"), 2)
    streamer = BlockStreamer(model, ring)
    seen = []
    for i, block in enumerate(model.blocks):
        def hook(mod, args, i=i):
            ptrs = {t.data_ptr() for t in streamer.tensors[i]}
            slot = {t.data_ptr() for t in ring.slots[i % 2]}
            seen.append((i, ptrs == slot))
        block.register_forward_pre_hook(hook)
    x, t, ctx = _inputs()
    with torch.no_grad():
        model(x, t, ctx)
    assert seen == [(i, True) for i in range(CFG.num_layers)]
    # int8 layers: weight (int8) and weight_scale are buffers; both travel with the block
    kinds = {t.dtype for t in streamer.tensors[0]}
    assert torch.int8 in kinds and torch.float32 in kinds
    # after the forward the block tensors point at the host copies again
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(streamer.tensors[0], streamer.host[0]))


def test_placement_policy_moves_non_block_tensors_and_shares_one_ring():
    experts = {"high": _model("fp32", 0), "low": _model("fp32", 1)}
    x, t, ctx = _inputs()
    with torch.no_grad():
        refs = {k: m(x, t, ctx) for k, m in experts.items()}
        policy = BlockStreaming(experts, torch.device("cpu"), 2)
        assert policy.offloads
        assert all(s.ring is policy.ring for s in policy.streamers.values())
        for name in ("high", "low", "high"):
            policy.activate(name)
            assert torch.equal(experts[name](x, t, ctx), refs[name])
        policy.release()
        assert policy.ring.nbytes == 0


def test_offload_values_at_the_edge():
    from wanmoe.errors import InputError
    from wanmoe.request import parse_offload, runtime_config
    from wanmoe.runtime.config import OffloadMode

    assert parse_offload("blocks:3") == (OffloadMode.BLOCKS, 3)
    assert parse_offload("blocks") == (OffloadMode.BLOCKS, 2)
    assert parse_offload("expert") == (OffloadMode.EXPERT, 2)
    rt = runtime_config("cpu", offload="blocks:4")
    assert rt.offload is OffloadMode.BLOCKS and rt.resident_blocks == 4
    for bad in ("blocks:0", "blocks:x", "blocks:", "layers"):
        with pytest.raises(InputError, match="blocks"):
            parse_offload(bad)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["bf16", "int8", "gguf"])
def test_cuda_streaming_matches_resident_and_holds_n_blocks(fmt):
    # The CUDA path: pinned host blocks, copies on the side stream, event ordering. Compared
    # with the same model resident on the GPU; device memory for weights = non-block + N blocks.
    dev = torch.device("cuda")
    x, t, ctx = _inputs()
    x, t, ctx = x.to(dev), t.to(dev), [c.to(dev) for c in ctx]
    model = _model(fmt)
    with torch.no_grad():
        ref = model.to(dev)(x, t, ctx)
        model.to("cpu")
        torch.cuda.synchronize()
        policy = BlockStreaming({"m": model}, dev, 2)
        assert all(h.is_pinned() for hs in policy.streamers["m"].host for h in hs)
        policy.activate("m")
        for _ in range(2):
            assert torch.equal(model(x, t, ctx), ref)
        block_bytes = sum(h.numel() * h.element_size() for h in policy.streamers["m"].host[0])
        assert policy.ring.nbytes == 2 * block_bytes
        policy.release()
        assert all(not p.is_cuda for p in model.parameters())


def test_a_subset_of_blocks_streams_in_order():
    # A hook that skips blocks (step caching) hands the runner a subset: same result as running
    # that subset resident.
    from wanmoe.models.dit import run_blocks

    model = _model("fp32")
    x, t, ctx = _inputs()
    keep = [model.blocks[0], model.blocks[2]]

    def subset(runner):
        return lambda blocks, h, *args: runner(keep, h, *args)

    with torch.no_grad():
        model.block_runner = subset(run_blocks)
        ref = model(x, t, ctx)
        model.block_runner = run_blocks
        streamer = BlockStreamer(model, SlotRing(torch.device("cpu"), 1))
        model.block_runner = subset(streamer._run)
        assert torch.equal(model(x, t, ctx), ref)


def test_host_copies_are_packed_into_slabs():
    from wanmoe.runtime.streaming import HostArena

    arena = HostArena(pin=False, slab_bytes=4096)
    a = arena.put(torch.arange(10, dtype=torch.float32))
    b = arena.put(torch.ones(3, 5, dtype=torch.bfloat16))
    c = arena.put(torch.zeros(2000, dtype=torch.float32))  # 8000 B > slab: its own allocation
    d = arena.put(torch.full((900,), 7, dtype=torch.int32))  # 3600 B: does not fit after b
    assert torch.equal(a, torch.arange(10, dtype=torch.float32)) and b.shape == (3, 5)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert b.data_ptr() - a.data_ptr() == 512  # 512-byte aligned
    assert c.numel() == 2000 and d.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    assert len(arena.slabs) == 2 and arena.nbytes == 8192
    model = _model("int8")
    streamer = BlockStreamer(model, SlotRing(torch.device("cpu"), 2))
    # every block tensor of the model lives in one of the arena's slabs
    slabs = {s.untyped_storage().data_ptr() for s in streamer.arena.slabs}
    assert all(t.untyped_storage().data_ptr() in slabs for ts in streamer.tensors for t in ts)
