"""LoRAPatch / merge_loras / runtime_patches: the reference formula by hand for the layouts
diffusers does not read, one fp32 rounding, merge == side branch, strength 0 == no LoRA."""

import functools

import pytest
import torch
import torch.nn.functional as F
from helpers_dit import TINY, randomize_, rel
from helpers_lora import block_modules, hand_merge, lora_factors, write_layout

from wanmoe.errors import CheckpointError, InputError
from wanmoe.lora import LoRAPatch, linear_with_patches, load_lora, merge_loras, runtime_patches
from wanmoe.models.dit import WanDiT


def _model(seed=0, dtype=torch.float32):
    return randomize_(WanDiT(TINY), seed).to(dtype).eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _deltas(state):
    """A LoRA file with full deltas of every kind, official names."""
    g = torch.Generator().manual_seed(7)
    d = TINY.dim

    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)
    return {"diffusion_model.head.head.diff": r(*state["head.head.weight"].shape),
            "diffusion_model.head.head.diff_b": r(state["head.head.bias"].shape[0]),
            "diffusion_model.blocks.0.self_attn.q.diff_b": r(d),
            "diffusion_model.blocks.1.norm3.diff": r(d), "diffusion_model.blocks.1.norm3.diff_b": r(d),
            "diffusion_model.blocks.0.diff_m": r(1, 6, d), "diffusion_model.head.diff_m": r(1, 2, d)}


@pytest.mark.parametrize("layout", ["lycoris", "peft_official", "peft_diffusers", "comfy_model"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_is_the_hand_formula(layout, dtype):
    model = _model(dtype=dtype)
    before = _state(model)
    factors = lora_factors(before, block_modules(TINY.num_layers), rank=4, seed=2, dtype=torch.bfloat16)
    alpha = None if layout.startswith("peft") else 3.0
    lora = load_lora(write_layout(factors, layout, alpha), set(before))
    merge_loras(model, [(lora, 0.8)])
    after = model.state_dict()
    for name, w in before.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module in factors:
            want = hand_merge(w, *factors[module], alpha, 0.8)
            assert after[name].dtype == dtype and torch.equal(after[name], want), name
        else:
            assert torch.equal(after[name], w), name


def test_full_deltas_are_exact():
    model = _model()
    before = _state(model)
    sd = _deltas(before)
    merge_loras(model, [(load_lora(sd, set(before)), 1.5)])
    after = model.state_dict()
    targets = {"head.head.weight": "head.head.diff", "head.head.bias": "head.head.diff_b",
               "blocks.0.self_attn.q.bias": "blocks.0.self_attn.q.diff_b",
               "blocks.1.norm3.weight": "blocks.1.norm3.diff", "blocks.1.norm3.bias": "blocks.1.norm3.diff_b",
               "blocks.0.modulation": "blocks.0.diff_m", "head.modulation": "head.diff_m"}
    for name, key in targets.items():
        assert torch.equal(after[name], before[name] + 1.5 * sd[f"diffusion_model.{key}"]), name
    assert sum(not torch.equal(after[k], v) for k, v in before.items()) == len(targets)


def test_two_loras_one_rounding():
    model = _model(dtype=torch.bfloat16)
    before = _state(model)
    fa = lora_factors(before, ["blocks.0.ffn.0"], rank=4, seed=3)
    fb = lora_factors(before, ["blocks.0.ffn.0"], rank=8, seed=4)
    a = load_lora(write_layout(fa, "comfy_down_up", 2.0), set(before))
    b = load_lora(write_layout(fb, "diffusers"), set(before))
    merge_loras(model, [(a, 0.5), (b, -1.0)])
    w = before["blocks.0.ffn.0.weight"].float()
    (da, ua), (db, ub) = fa["blocks.0.ffn.0"], fb["blocks.0.ffn.0"]
    w += (0.5 * (2.0 / 4)) * (ua @ da)
    w += -1.0 * (ub @ db)
    assert torch.equal(model.state_dict()["blocks.0.ffn.0.weight"], w.to(torch.bfloat16))


def test_strength_zero_is_no_lora_bit_exactly():
    model = _model(dtype=torch.bfloat16)
    with torch.no_grad():
        model.blocks[0].self_attn.q.weight[0, :4] = -0.0  # -0.0 + 0.0 would turn into +0.0
    before = _state(model)
    f = lora_factors(before, block_modules(TINY.num_layers), rank=4, seed=5)
    sd = {**write_layout(f, "comfy_down_up", 4.0), **_deltas(before)}
    lora = load_lora(sd, set(before))
    assert merge_loras(model, [(lora, 0.0)]) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(v.view(torch.int16), before[k].view(torch.int16)), k
    assert runtime_patches(model, [(lora, 0)]) == {}
    p = lora.patches["blocks.0.self_attn.q"].with_strength(0)
    w = before["blocks.0.self_attn.q.weight"]
    assert torch.equal(p.merge_into(w).view(torch.int16), w.view(torch.int16))


def test_patch_api_delta_merge_side():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    p = LoRAPatch("m", up=torch.randn(24, 4, generator=g), down=torch.randn(4, 16, generator=g),
                  alpha=6.0, diff_b=torch.randn(24, generator=g), strength=0.5)
    assert p.scale == 0.5 * (6.0 / 4) and p.rank == 4
    assert torch.equal(p.delta(), 0.75 * (p.up @ p.down))
    assert torch.equal(p.merge_into(w), w + 0.75 * (p.up @ p.down))
    assert torch.equal(p.delta(torch.bfloat16), (0.75 * (p.up @ p.down)).bfloat16())
    x = torch.randn(3, 5, 16, generator=g)
    side = linear_with_patches(x, w, b, [p])
    merged = F.linear(x, p.merge_into(w), b + p.bias_delta())
    assert rel(side, merged) < 1e-6  # fp32: summation order only (measured ~1e-7)
    xb = x.bfloat16()
    assert linear_with_patches(xb, w, b, [p]).dtype == torch.bfloat16
    assert rel(p.side(xb), p.side(x)) < 2e-2  # the branch runs in bf16
    no_alpha = LoRAPatch("m", up=p.up, down=p.down)
    assert no_alpha.scale == 1.0 and torch.equal(no_alpha.delta(), p.up @ p.down)


def test_side_branch_model_equals_merged_model():
    """Linears served by runtime patches (side branch) + the rest merged == everything merged."""
    merged, branched = _model(1), _model(1)
    state = _state(merged)
    f = lora_factors(state, block_modules(TINY.num_layers) + ["head.head", "time_projection.1"],
                     rank=4, seed=6)
    one = load_lora(write_layout(f, "musubi", 2.0), set(state))
    two = load_lora(_deltas(state), set(state))
    loras = [(one, 0.9), (two, 1.1)]
    merge_loras(merged, loras)
    rp = runtime_patches(branched, loras)
    assert "blocks.0" not in rp and "blocks.1.norm3" not in rp  # modulation/norm: merged
    assert len(rp["head.head"]) == 2  # low-rank from one file, diff + diff_b from the other
    merge_loras(branched, loras, exclude=rp.keys())
    modules = dict(branched.named_modules())
    for path, patches in rp.items():
        m = modules[path]
        m.forward = functools.partial(lambda m, ps, x: linear_with_patches(x, m.weight, m.bias, ps), m, patches)
    x, ctx = torch.randn(1, 16, 2, 4, 4), [torch.randn(5, 32)]
    with torch.no_grad():
        a, b = merged(x, torch.tensor([900]), ctx), branched(x, torch.tensor([900]), ctx)
    print(f"merged vs side branch: rel {rel(b, a):.2e}")
    assert rel(b, a) < 1e-5  # fp32 summation order only; measured ~3e-7


def test_conv_lora_merges():
    model = _model()
    before = _state(model)
    w = before["patch_embedding.weight"]  # [d, in, 1, 2, 2]
    g = torch.Generator().manual_seed(8)
    down = torch.randn(2, *w.shape[1:], generator=g)
    up = torch.randn(w.shape[0], 2, 1, 1, 1, generator=g)
    sd = {"diffusion_model.patch_embedding.lora_down.weight": down,
          "diffusion_model.patch_embedding.lora_up.weight": up}
    lora = load_lora(sd, {k: tuple(v.shape) for k, v in before.items()})
    merge_loras(model, [(lora, 1.0)])
    want = w + (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    assert torch.equal(model.patch_embedding.weight, want)
    assert runtime_patches(model, [(lora, 1.0)]) == {}  # Conv3d: not a linear side branch
    with pytest.raises(InputError, match="conv LoRA"):
        lora.patches["patch_embedding"].side(torch.randn(2, w.shape[1]))


def test_errors():
    model = _model()
    state = _state(model)
    f = lora_factors(state, ["blocks.0.ffn.0"], rank=2, seed=9)
    lora = load_lora(write_layout(f, "comfy_AB"), set(state))  # names only: no shape check yet
    with pytest.raises(InputError, match="strength"):
        merge_loras(model, [(lora, "1.0")])
    other = WanDiT(TINY.__class__(**{**TINY.__dict__, "ffn_dim": 64}))
    with pytest.raises(CheckpointError, match="another model size"):
        merge_loras(other, [(lora, 1.0)])
    with pytest.raises(InputError, match="quantised"):
        lora.patches["blocks.0.ffn.0"].merge_into(torch.zeros(128, 96, dtype=torch.int8))


def test_weight_path_merge_equals_model_merge():
    """merge_patches / merge_bias (per linear, as the weight path calls them) give the same
    bits as merge_loras on the model, for bf16 storage and two LoRAs on one linear."""
    from wanmoe.lora import merge_bias, merge_patches

    model = _model(dtype=torch.bfloat16)
    state = _state(model)
    f = lora_factors(state, ["head.head", "blocks.0.ffn.2"], rank=4, seed=11)
    loras = [(load_lora(write_layout(f, "comfy_down_up", 2.0), set(state)), 0.6),
             (load_lora(_deltas(state), set(state)), -0.4)]
    rp = runtime_patches(model, loras)
    merge_loras(model, loras)
    after = model.state_dict()
    for module in ("head.head", "blocks.0.ffn.2"):
        w = merge_patches(state[f"{module}.weight"], rp[module])
        b = merge_bias(state[f"{module}.bias"], rp[module])
        assert torch.equal(w, after[f"{module}.weight"]) and torch.equal(b, after[f"{module}.bias"])
    assert merge_patches(state["blocks.1.ffn.0.weight"], []) is state["blocks.1.ffn.0.weight"]
