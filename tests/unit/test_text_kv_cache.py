"""Per-run text K/V cache (runtime.text_kv): bit-identical latents, and the text path runs once.

Tiny official A14B checkpoint (two experts), 3 steps. "off" is the plain loop (every step
embeds the context and projects its keys/values again); "on" must give exactly its latents.
"""

from dataclasses import replace

import pytest
import torch
from helpers_lora import block_modules, lora_factors, write_layout
from safetensors.torch import load_file, save_file

from wanmoe.errors import InputError
from wanmoe.pipeline import load_pipeline
from wanmoe.request import runtime_config
from wanmoe.runtime.memory import MemoryRequest, predict
from wanmoe.runtime.text_kv import decide_text_kv_cache, text_kv_bytes
from wanmoe.testing.tiny import tiny_dit_config, write_tiny_official_a14b

PROMPT = "a red ball rolls to the right"
KW = dict(size="64*64", frames=5, steps=3, seed=4, progress=False, decode=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_official_a14b(tmp_path_factory.mktemp("Wan2.2-T2V-A14B"), seed=0)


def _pipe(ckpt, dtype="fp32", offload=None):
    return load_pipeline(ckpt, runtime=runtime_config("cpu", dtype, offload=offload))


def _latents(pipe, mode, batched=False, **kw):
    pipe.runtime = replace(pipe.runtime, text_kv_cache=mode)
    out = pipe.generate(PROMPT, batched_cfg=batched, **{**KW, **kw}).latents
    for model in pipe.experts.values():  # nothing survives the run
        assert model.text_memo is None
        assert all(b.cross_attn.kv_memo is None for b in model.blocks)
    return out


class _Counter:
    """Calls of the text MLP and of every cross-attention k/v projection, per expert."""

    def __init__(self, pipe):
        self.calls = {name: {"text": 0, "k": 0, "v": 0} for name in pipe.experts}
        self.handles = []
        for name, model in pipe.experts.items():
            self._hook(model.text_embedding, name, "text")
            for block in model.blocks:
                self._hook(block.cross_attn.k, name, "k")
                self._hook(block.cross_attn.v, name, "v")

    def _hook(self, module, name, what):
        def hook(*_):
            self.calls[name][what] += 1
        self.handles.append(module.register_forward_pre_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batched", [False, True])
def test_cache_is_bit_identical_and_projects_once(ckpt, dtype, batched):
    pipe = _pipe(ckpt, dtype)
    n_blocks = tiny_dit_config(16).num_layers
    counts = {}
    for mode in ("off", "on"):
        counter = _Counter(pipe)
        lat = _latents(pipe, mode, batched, steps=6)  # both experts run several steps
        counter.remove()
        counts[mode] = (lat, counter.calls)
    assert torch.equal(counts["on"][0], counts["off"][0])
    passes = 1 if batched else 2  # one batched call holds both contexts; else cond, uncond apart
    for name in pipe.experts:
        off, on = counts["off"][1][name], counts["on"][1][name]
        forwards = off["text"]  # uncached: the text MLP runs once per DiT forward
        assert forwards >= passes and off["k"] == off["v"] == forwards * n_blocks
        assert on["text"] == passes, (name, on)  # once per context (batch) per expert
        assert on["k"] == on["v"] == passes * n_blocks
        assert forwards > on["text"]  # the loop really called the expert more than once


def test_set_loras_between_runs_sees_new_weights(ckpt, tmp_path):
    pipe = _pipe(ckpt)
    state = {}
    for f in sorted((ckpt / "high_noise_model").glob("*.safetensors")):
        state.update(load_file(str(f)))
    # A LoRA on the cross-attention k/v only: a stale cache would keep the old K/V.
    mods = [m for m in block_modules(tiny_dit_config(16).num_layers)
            if m.endswith(("cross_attn.k", "cross_attn.v"))]
    lora = tmp_path / "kv.safetensors"
    save_file(write_layout(lora_factors(state, mods, 4, 7), "diffusers", alpha=4.0), str(lora))
    plain_on = _latents(pipe, "on")
    pipe.set_loras(both=[(str(lora), 1.0)])
    lora_on = _latents(pipe, "on")
    lora_off = _latents(pipe, "off")
    assert torch.equal(lora_on, lora_off)
    assert not torch.equal(lora_on, plain_on)  # the LoRA matters, so a stale cache would show
    pipe.set_loras()
    assert torch.equal(_latents(pipe, "on"), plain_on)


def test_block_streaming(ckpt):
    pipe = _pipe(ckpt, "bf16", offload="blocks:1")
    assert torch.equal(_latents(pipe, "on"), _latents(pipe, "off"))


@pytest.mark.parametrize("batched", [False, True])
def test_chunked_block_path(ckpt, batched):
    pipe = _pipe(ckpt, "bf16")
    for model in pipe.experts.values():
        model.set_activation_chunking(threshold=1, tokens=5)
    calls = []
    for block in pipe.experts["low_noise"].blocks:  # the chunked path really runs
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    counter = _Counter(pipe)
    on = _latents(pipe, "on", batched)
    assert counter.calls["low_noise"]["k"] == (1 if batched else 2) * len(pipe.experts["low_noise"].blocks)
    counter.remove()
    assert torch.equal(on, _latents(pipe, "off", batched)) and calls


def test_context_changed_in_place_is_recomputed(ckpt):
    """The memo holds the context tensor and its version: an in-place edit misses the cache."""
    pipe = _pipe(ckpt)
    model = pipe.experts["low_noise"]
    ctx = [torch.randn(7, model.cfg.text_dim)]
    from wanmoe.runtime.text_kv import text_kv_cache

    with torch.no_grad(), text_kv_cache(pipe.experts):
        first = model.text_context(ctx, torch.float32)
        assert model.text_context(ctx, torch.float32) is first
        assert model.text_context([ctx[0].clone()], torch.float32) is not first
        ctx[0].mul_(2)
        again = model.text_context(ctx, torch.float32)
        assert torch.equal(again, model.embed_text(ctx, torch.float32))
        assert not torch.equal(again, first)
    assert model.text_memo is None


def test_modes_and_memory_model():
    assert decide_text_kv_cache("auto", torch.device("cpu"), False, 10**12, None)
    assert not decide_text_kv_cache("auto", torch.device("cpu"), True, 0, None)  # compiled
    assert decide_text_kv_cache("on", torch.device("cpu"), True, 0, None)
    assert not decide_text_kv_cache("off", torch.device("cpu"), False, 0, None)
    assert decide_text_kv_cache("auto", torch.device("cuda"), False, 8, 10)
    assert not decide_text_kv_cache("auto", torch.device("cuda"), False, 9, 10)
    assert not decide_text_kv_cache("auto", torch.device("cuda"), False, 1, None)
    with pytest.raises(InputError, match="text_kv_cache"):
        runtime_config("cpu", text_kv_cache="sometimes")
    from wanmoe.configs import T2V_A14B as preset

    d = preset.dit
    # 40 blocks x 512 tokens x 5120 x (k, v) x (cond, uncond) in bf16, plus the two embedded contexts
    want = d.num_layers * 512 * 5120 * 2 * 2 * 2 + 2 * 512 * 5120 * 2
    assert (d.num_layers, d.text_len, d.dim) == (40, 512, 5120)
    assert text_kv_bytes(d, 2, torch.bfloat16) == want
    req = MemoryRequest(preset, 1280, 720, 81)
    off, on = predict(req), predict(replace(req, text_kv_cache=True))
    assert on.parts["text_kv_cache"] == want and off.parts["text_kv_cache"] == 0
    assert on.stages["denoise"] - off.stages["denoise"] == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_rmsnorm_is_the_whole_tensor_formula(dtype):
    """The CPU row-blocked WanRMSNorm (same profile pass) equals the official formula bit for bit."""
    from wanmoe.models.layers import WanRMSNorm

    norm = WanRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = (torch.randn(3, 1001, 96) * 3).to(dtype)  # 1001 rows: the last block is partial
    want = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * norm.weight
    with torch.no_grad():
        for rows in (1, 7, 682):
            got = norm._forward_blocked(x, rows)
            assert got.dtype == want.dtype and torch.equal(got, want)
        assert torch.equal(norm(x), want)  # large enough for the blocked path
        xt = x.transpose(0, 1)  # non-contiguous input
        assert torch.equal(norm(xt), want.transpose(0, 1))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_blocked_rmsnorm_in_the_pipeline(ckpt, dtype, monkeypatch):
    from wanmoe.models.layers import WanRMSNorm

    pipe = _pipe(ckpt, dtype)
    monkeypatch.setattr(WanRMSNorm, "cpu_block_elements", 10**12)  # whole-tensor formula
    whole = _latents(pipe, "off")
    calls = []
    monkeypatch.setattr(WanRMSNorm, "cpu_block_elements", 2000)  # a few rows per block
    real = WanRMSNorm._forward_blocked
    monkeypatch.setattr(WanRMSNorm, "_forward_blocked",
                        lambda self, x, rows: calls.append(rows) or real(self, x, rows))
    assert torch.equal(_latents(pipe, "off"), whole) and calls
