"""`--weights fp8|int8` quantised tensor by tensor while loading (runtime.quant.on_load).

The reference is the old path, written out here: load the whole expert in float
(`load_dit`), merge LoRAs into the float weights (`apply_loras`, merge mode), then
`quantize_model`. The new path must give the same tensors bit for bit, the same layer types
and the same latents, and must never hold more than one float block linear at a time.
"""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers_lora import block_modules, lora_factors, write_layout
from wanmoe.loading.components import load_dit
from wanmoe.lora.apply import apply_loras, parse_loras
from wanmoe.pipeline import _load_expert, load_pipeline, resolve
from wanmoe.request import runtime_config
from wanmoe.runtime.config import LoRAMode
from wanmoe.runtime.quant import on_load
from wanmoe.runtime.quant.apply import block_linears, is_block_linear, make_installer, quantize_model
from wanmoe.runtime.quant.linear import FP8Linear, Int8Linear
from wanmoe.testing.tiny import convert_to_diffusers_layout, write_tiny_official_a14b


class LoadThenQuantise(on_load.OnLoadQuantiser):
    """Today's path before this change: nothing converted on read; LoRAs merged into the float
    expert, then `quantize_model` on the whole expert."""

    def plan(self, name, shape):
        return None

    def finish(self, model):
        if self.loras:
            apply_loras(model, self.loras, LoRAMode.MERGE)
        return quantize_model(model, self.mode)


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return write_tiny_official_a14b(tmp_path_factory.mktemp("qload-a14b"), seed=3)


@pytest.fixture(scope="module")
def lora_file(a14b, tmp_path_factory):
    """A LoRA on every block linear of the high expert plus a bias delta on one quantised linear
    and a delta on a non-block linear (merged after the load)."""
    spec = resolve(a14b)
    model = load_dit(spec.experts["high_noise"], spec.preset.dit)
    state = {k: v for k, v in model.state_dict().items()}
    mods = block_modules(spec.preset.dit.num_layers) + ["time_projection.1"]
    sd = write_layout(lora_factors(state, mods, rank=4, seed=9), "comfy_AB", alpha=2.0)
    g = torch.Generator().manual_seed(5)
    bias = state["blocks.1.ffn.0.bias"]
    sd["diffusion_model.blocks.1.ffn.0.diff_b"] = 0.05 * torch.randn(bias.shape, generator=g)
    path = tmp_path_factory.mktemp("qload-lora") / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _expert(path, name, weights, dtype, loras=(), old=False, monkeypatch=None):
    spec = resolve(path)
    rt = runtime_config("cpu", dtype, weights=weights, lora_mode="merge")
    parsed = parse_loras(spec.preset.dit, loras)
    if old:
        monkeypatch.setattr(on_load, "OnLoadQuantiser", LoadThenQuantise)
    try:
        return _load_expert(spec, name, rt, torch.device("cpu"), None, parsed)
    finally:
        if old:
            monkeypatch.undo()


def _assert_same(new: nn.Module, ref: nn.Module):
    assert [type(m) for m in new.modules()] == [type(m) for m in ref.modules()]
    a, b = new.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype == torch.float8_e4m3fn else a[k],
                           b[k].view(torch.uint8) if b[k].dtype == torch.float8_e4m3fn else b[k]), k
    qa = {n: m for n, m in new.named_modules() if isinstance(m, (FP8Linear, Int8Linear))}
    for n, m in qa.items():  # buffers (fp8 / int8 weight and scale) too, not only the state dict
        r = ref.get_submodule(n)
        assert torch.equal(m.weight.view(torch.uint8), r.weight.view(torch.uint8)), n
        assert torch.equal(m.weight_scale, r.weight_scale) and m.workspace is r.workspace is None
        assert len(m.patches) == len(r.patches)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("weights", ["fp8", "int8"])
def test_expert_equals_load_then_quantise(a14b, weights, dtype, monkeypatch):
    new = _expert(a14b, "low_noise", weights, dtype)
    ref = _expert(a14b, "low_noise", weights, dtype, old=True, monkeypatch=monkeypatch)
    want = FP8Linear if weights == "fp8" else Int8Linear
    assert all(isinstance(m, want) for _, m in block_linears(new))
    _assert_same(new, ref)


@pytest.mark.parametrize("weights", ["fp8", "int8"])
def test_merged_lora_goes_into_the_float_weight_before_quantisation(a14b, lora_file, weights, monkeypatch):
    loras = [(str(lora_file), 0.7)]
    new = _expert(a14b, "high_noise", weights, "bf16", loras)
    ref = _expert(a14b, "high_noise", weights, "bf16", loras, old=True, monkeypatch=monkeypatch)
    _assert_same(new, ref)
    plain = _expert(a14b, "high_noise", weights, "bf16")
    # the LoRA did change the quantised weights, the merged bias and the non-block linear
    assert not torch.equal(new.blocks[0].self_attn.q.weight_scale, plain.blocks[0].self_attn.q.weight_scale)
    assert not torch.equal(new.blocks[1].ffn[0].bias, plain.blocks[1].ffn[0].bias)
    assert torch.equal(new.blocks[0].ffn[0].bias, plain.blocks[0].ffn[0].bias)
    assert not torch.equal(new.time_projection[1].weight, plain.time_projection[1].weight)
    assert all(not m.patches for _, m in block_linears(new))  # merged, not side branches


def test_diffusers_layout_goes_through_the_key_map(a14b, tmp_path, monkeypatch):
    diff = convert_to_diffusers_layout(a14b, tmp_path / "diffusers")
    new = _expert(diff, "high_noise", "fp8", "bf16")
    ref = _expert(diff, "high_noise", "fp8", "bf16", old=True, monkeypatch=monkeypatch)
    _assert_same(new, ref)
    _assert_same(new, _expert(a14b, "high_noise", "fp8", "bf16"))


def test_one_float_block_linear_at_a_time(a14b, monkeypatch):
    """Every block linear is converted on read, and when one is installed no other block
    linear of the model holds a float weight (the peak is the quantised expert + one tensor)."""
    seen = []
    install = on_load.OnLoadQuantiser.install

    def spy(self, model, name, value):
        install(self, model, name, value)
        floats = [n for n, m in model.named_modules() if is_block_linear(n) and isinstance(m, nn.Linear)
                  and m.weight.device.type != "meta"]
        seen.append((name, floats))

    monkeypatch.setattr(on_load.OnLoadQuantiser, "install", spy)
    model = _expert(a14b, "low_noise", "int8", "bf16")
    n_linears = len(list(block_linears(model)))
    assert len(seen) == n_linears == 10 * model.cfg.num_layers
    assert all(not floats for _, floats in seen)


def test_pipeline_latents_match_the_old_path_with_offload_and_lora(a14b, lora_file, monkeypatch):
    kw = dict(size="64*64", frames=5, steps=2, seed=4, progress=False)
    loras = {"high_noise": [(str(lora_file), 0.7)]}
    new = load_pipeline(a14b, device="cpu", dtype="bf16", weights="fp8", offload="blocks:1", loras=loras)
    monkeypatch.setattr(on_load, "OnLoadQuantiser", LoadThenQuantise)
    old = load_pipeline(a14b, device="cpu", dtype="bf16", weights="fp8", offload="none", loras=loras)
    monkeypatch.undo()
    assert new.merged_loras and old.merged_loras
    assert torch.equal(new.generate("a red ball rolls", **kw).latents,
                       old.generate("a red ball rolls", **kw).latents)


def test_gguf_stored_linears_are_converted_after_the_load_as_before(a14b, tmp_path, monkeypatch):
    from wanmoe import cli

    for role in ("high", "low"):
        assert cli.main(["convert", str(a14b / f"{role}_noise_model"), "--to", "gguf-q8_0",
                         "--out", str(tmp_path / f"{role}.gguf")]) == 0
    spec = resolve(high=tmp_path / "high.gguf", low=tmp_path / "low.gguf", vae=a14b / "Wan2.1_VAE.pth",
                   text_encoder=a14b / "models_t5_umt5-xxl-enc-bf16.pth", tokenizer=a14b / "google" / "umt5-xxl")
    rt = runtime_config("cpu", "fp32", weights="int8")
    new = _load_expert(spec, "low_noise", rt, torch.device("cpu"))
    monkeypatch.setattr(on_load, "OnLoadQuantiser", LoadThenQuantise)
    ref = _load_expert(spec, "low_noise", rt, torch.device("cpu"))
    _assert_same(new, ref)
    assert all(isinstance(m, Int8Linear) for _, m in block_linears(new))


def test_quantiser_refuses_other_modes():
    from wanmoe.errors import InputError
    from wanmoe.testing.tiny import tiny_dit_config

    with pytest.raises(InputError, match="bf16"):
        on_load.OnLoadQuantiser("bf16", tiny_dit_config(16), torch.float32, fallback=make_installer())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantisers_give_the_same_result_in_a_reused_scratch_buffer(dtype):
    from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_int8

    g = torch.Generator().manual_seed(1)
    work = torch.full((64 * 96,), float("nan"))  # stale contents must not leak into the result
    for shape in ((64, 96), (32, 40), (64, 96)):
        w = (torch.randn(shape, generator=g) * 3).to(dtype)
        w[1] = 0  # an all-zero row: scale 1
        kept = w.clone()
        for fn in (quantize_fp8, quantize_int8):
            (q, s), (rq, rs) = fn(w, work), fn(w)
            assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
        assert torch.equal(w, kept)  # the weight itself is never written


# ---- the planner -------------------------------------------------------------------------------

def test_planner_load_peak_is_the_quantised_experts_plus_one_tensor():
    from wanmoe.configs import T2V_A14B
    from wanmoe.runtime.memory import (PROCESS_BASE, MemoryRequest, _float_expert_bytes, expert_bytes,
                                       predict, quantise_on_load_bytes, vae_bytes)

    cfg = T2V_A14B.dit
    for dtype, w in ((torch.bfloat16, 2), (torch.float32, 4)):
        # the largest block linear (ffn) as read, its abs() and the float32 scratch
        assert quantise_on_load_bytes(T2V_A14B, dtype) == cfg.ffn_dim * cfg.dim * (2 * w + 4)
    one = quantise_on_load_bytes(T2V_A14B)
    for weights in ("fp8", "int8"):
        nb, blk = expert_bytes(T2V_A14B, weights)
        expert = nb + blk * cfg.num_layers
        for off in ("expert", "blocks"):
            pred = predict(MemoryRequest(T2V_A14B, 832, 480, 81, weights, off, 2))
            ram_load = PROCESS_BASE + 2 * expert + one
            assert pred.ram_stage == "run" and pred.ram_peak > ram_load  # the load is no longer the peak
            old = PROCESS_BASE + expert + _float_expert_bytes(T2V_A14B, torch.bfloat16)  # before: 45.4 GB
            assert old - ram_load > 13e9
        pred = predict(MemoryRequest(T2V_A14B, 832, 480, 81, weights, "none"))
        assert pred.stages["load"] == 2 * expert + one + vae_bytes(T2V_A14B)  # quantised on the device


def test_planner_text_weights_count_the_t5_linears_at_one_byte():
    import dataclasses

    from wanmoe.configs import T2V_A14B
    from wanmoe.runtime.memory import text_encoder_bytes
    from wanmoe.runtime.quant.apply import quantized_bytes
    from wanmoe.runtime.weights import set_module
    from wanmoe.testing.tiny import tiny_t5_config
    from wanmoe.text.umt5 import UMT5Encoder

    preset = dataclasses.replace(T2V_A14B, t5=tiny_t5_config(256))
    model = UMT5Encoder(preset.t5).to(torch.bfloat16)
    assert text_encoder_bytes(preset, torch.bfloat16) == quantized_bytes(model)
    for name, m in list(model.named_modules()):
        if name.startswith("blocks.") and isinstance(m, nn.Linear):
            set_module(model, name, Int8Linear.from_linear(m))
    assert text_encoder_bytes(preset, torch.bfloat16, "int8") == quantized_bytes(model)
    assert text_encoder_bytes(preset, torch.bfloat16, "fp8") == quantized_bytes(model)


def test_a14b_fp8_host_ram_goal_as_the_planner_sees_it():
    """Issue 12: fp8 experts need <= 32 GB of host RAM. The experts on the GPU (offload none):
    the host holds the process and the text encoder on the CPU (--t5-cpu), 12.9 GB, 8.2 GB with
    the T5 linears in fp8; the load no longer materialises a bf16 expert. Streamed from the host
    the two fp8 experts alone are 31.7 GB: the run needs 40.0 GB with an fp8 T5 (docs/memory.md)."""
    from wanmoe.configs import T2V_A14B
    from wanmoe.runtime.memory import MemoryRequest, predict

    gib = 2**30
    for tw, limit in ((None, 13.0e9), ("fp8", 8.3e9)):
        pred = predict(MemoryRequest(T2V_A14B, 832, 480, 81, "fp8", "none", text_on_device=False,
                                     text_weights=tw))
        assert pred.ram_peak <= limit and pred.ram_peak <= 32 * gib, pred.ram_peak
    pred = predict(MemoryRequest(T2V_A14B, 832, 480, 81, "fp8", "blocks", 2, text_on_device=False,
                                 text_weights="fp8"))
    assert pred.ram_stage == "run" and 39e9 < pred.ram_peak < 41e9


@pytest.mark.parametrize("layout", ["pth", "fp8_scaled", "comfy_quant"])
def test_other_containers_equal_load_then_quantise(a14b, tmp_path, layout, monkeypatch):
    """A `.pth` state dict and ComfyUI scaled-fp8 files (scales applied on read) give the same
    expert as load-then-quantise."""
    import types

    from wanmoe.testing.layouts import read_all
    from wanmoe.testing.quantized import comfy_quant_state, fp8_scaled_state

    spec = resolve(a14b)
    sd = read_all(spec.experts["high_noise"])
    if layout == "pth":
        path = tmp_path / "expert.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "expert.safetensors"
        save_file((fp8_scaled_state if layout == "fp8_scaled" else comfy_quant_state)(sd), str(path))
    one = types.SimpleNamespace(experts={"dense": path}, preset=spec.preset)
    rt = runtime_config("cpu", "bf16", weights="fp8")
    made = []

    class Recording(on_load.OnLoadQuantiser):
        def finish(self, model):
            made.append(set(self.done))
            return super().finish(model)

    monkeypatch.setattr(on_load, "OnLoadQuantiser", Recording)
    new = _load_expert(one, "dense", rt, torch.device("cpu"))
    assert made == [{n for n, _ in block_linears(new)}]  # every one quantised on read
    monkeypatch.setattr(on_load, "OnLoadQuantiser", LoadThenQuantise)
    _assert_same(new, _load_expert(one, "dense", rt, torch.device("cpu")))
    assert all(isinstance(m, FP8Linear) for _, m in block_linears(new))
