"""runtime.weights: one weight path for dense and quantised linears, with LoRA side branches."""

import torch
from torch import nn

from wanmoe.lora.patch import LoRAPatch, merge_patches
from wanmoe.runtime.quant.linear import FP8Linear, GGUFLinear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_int8
from wanmoe.runtime.weights import DenseLinear, WeightLinear, as_weight_linear, attach_patches, clear_patches


def _patch(out_f, in_f, seed, strength=0.7):
    g = torch.Generator().manual_seed(seed)
    return LoRAPatch("lin", up=0.1 * torch.randn(out_f, 4, generator=g),
                     down=torch.randn(4, in_f, generator=g) / in_f**0.5, alpha=2.0, strength=strength)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_dense_linear_is_bit_identical_to_the_model_linear():
    from wanmoe.models.layers import CastLinear

    lin = CastLinear(64, 32)
    x = torch.randn(3, 5, 64)
    dense = as_weight_linear(lin)
    assert isinstance(dense, DenseLinear) and dense.weight is lin.weight  # no copy
    for dt in (torch.float32, torch.bfloat16):
        assert torch.equal(dense(x.to(dt)), lin(x.to(dt)))


def test_side_branch_equals_merged_weight_on_every_kind_of_base():
    torch.manual_seed(0)
    w, b = torch.randn(48, 64) * 0.05, torch.randn(48) * 0.01
    p = _patch(48, 64, 1)
    x = torch.randn(2, 7, 64)
    bases = {"dense": DenseLinear(w.clone(), b.clone()),
             "fp8": FP8Linear(*quantize_fp8(w), b.clone()),
             "int8": Int8Linear(*quantize_int8(w), b.clone())}
    from gguf import GGMLQuantizationType, quants

    from wanmoe.runtime.quant.gguf_dequant import GGUFWeight

    raw = quants.quantize(w.numpy(), GGMLQuantizationType.Q8_0)
    bases["gguf_q8_0"] = GGUFLinear(GGUFWeight(torch.from_numpy(raw), "Q8_0", (48, 64)), b.clone())
    for name, layer in bases.items():
        # the dequantised base with the LoRA merged (the reference) ...
        merged = nn.functional.linear(x, merge_patches(layer.dequantized(torch.float32), [p]), b)
        layer.patches = [p]
        # ... equals the quantised base with a side branch: the base never dequantised-requantised
        assert _rel(layer(x), merged) < 1e-5, name
        assert _rel(layer.reference_forward(x), merged) < 1e-5, name


def test_attach_and_clear_patches_on_a_model():
    from wanmoe.models.layers import CastLinear

    model = nn.Sequential(CastLinear(16, 16), nn.ReLU(), CastLinear(16, 8))
    x = torch.randn(4, 16)
    plain = model(x)
    attach_patches(model, {"2": [_patch(8, 16, 3)]})
    assert isinstance(model[2], WeightLinear) and isinstance(model[0], CastLinear)
    assert _rel(model(x), plain) > 1e-4
    clear_patches(model)
    assert torch.equal(model(x), plain)
