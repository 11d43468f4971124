"""A tiny WanDiT in every weight layout vs its fp32 source: quantize_model / install_quantized.

Tolerances: a quantised linear's output error relative to its output is about the relative
error of its weight (random inputs), and the residual stream of a 2-block DiT does not amplify
it (measured ratio ~0.6). Each test measures the weight error e_w of its format over the block
linears and asserts output error <= 1.5 * e_w + floor, floor = 0.01 for bf16 compute (bf16
activations alone give ~0.3% here) and 1e-4 for fp32. Exact layouts are checked bit for bit.
"""

import pytest
import torch
from helpers_quant import CFG, gguf_tensors, tiny_state
from safetensors.torch import save_file

from wanmoe.convert import convert_expert
from wanmoe.errors import CheckpointError, InputError
from wanmoe.loading.components import load_dit
from wanmoe.models.dit import WanDiT
from wanmoe.runtime.quant.apply import block_linears, install_quantized, make_installer, quantize_model
from wanmoe.runtime.quant.linear import DequantWorkspace, FP8Linear, GGUFLinear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_gguf

DTYPES = [torch.float32, torch.bfloat16]
FLOOR = {torch.float32: 1e-4, torch.bfloat16: 0.01}


SD = tiny_state()
X = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
T = torch.tensor([500])
CTX = [torch.randn(10, 32, generator=torch.Generator().manual_seed(2))]


def source_model(dtype=torch.float32, sd=None):
    m = WanDiT(CFG)
    m.load_state_dict(SD if sd is None else sd)
    return m.eval().set_compute_dtype(dtype)


@pytest.fixture(scope="module")
def reference():
    with torch.no_grad():
        return source_model()(X, T, CTX)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files written once per module: `files("src")` (SD as safetensors), `files("bf16")` /
    `files("fp8")` (`wanmoe convert` of it), `files(<GGUF mix>)` (SD with quantised block linears)."""
    from wanmoe.loading.gguf import write_gguf

    root, made = tmp_path_factory.mktemp("quant_model"), {}

    def get(kind: str):
        if kind not in made:
            if kind == "src":
                save_file(SD, str(root / "src.safetensors"))
                made[kind] = root / "src.safetensors"
            elif kind in ("bf16", "fp8"):
                made[kind] = convert_expert(get("src"), root / f"{kind}.safetensors", kind)
            else:
                made[kind] = write_gguf(root / f"{kind}.gguf", gguf_tensors(SD, kind))
        return made[kind]

    return get


def run(model):
    with torch.no_grad():
        return model(X, T, CTX)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def weight_error(model) -> float:
    """Relative error of all block-linear weights of `model` vs the fp32 source."""
    num = den = 0.0
    for name, m in block_linears(model):
        w = m.dequantized(torch.float32) if hasattr(m, "dequantized") else m.weight.float()
        num += (w - SD[name + ".weight"]).pow(2).sum().item()
        den += SD[name + ".weight"].pow(2).sum().item()
    return (num / den) ** 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_bf16_file_reproduces_bf16_run_exactly(files, reference, dtype):
    out = files("bf16")
    y = run(load_dit(out, CFG, dtype))
    if dtype == torch.bfloat16:  # storage dtypes keep the official bf16 semantics bit-exact
        assert torch.equal(y, run(source_model(torch.bfloat16)))
    else:  # fp32 compute with bf16-rounded weights: e_w = bf16 rounding (2^-9 relative)
        assert rel(y, reference) < 1.5 * 2**-9 * 2 + FLOOR[dtype]


@pytest.mark.parametrize("mode,cls,dtype", [("fp8", FP8Linear, torch.float32),
                                            ("fp8", FP8Linear, torch.bfloat16),
                                            ("int8", Int8Linear, torch.bfloat16)])
def test_channel_modes(reference, mode, cls, dtype):
    model = quantize_model(source_model(dtype), mode)
    assert sum(isinstance(m, cls) for _, m in block_linears(model)) == 10 * CFG.num_layers
    assert isinstance(model.time_projection[1], torch.nn.Linear)  # fp32 region untouched
    e_w = weight_error(model)
    assert rel(run(model), reference) <= 1.5 * e_w + FLOOR[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_file_loads_to_the_same_model(files, dtype):
    out = files("fp8")
    dense = load_dit(out, CFG, dtype)  # scales applied at load (ScaledFp8Source)
    # Our fp8 file stores the unquantised bf16-region tensors (biases, embeddings) in bf16.
    quantised = {n + ".weight" for n, _ in block_linears(source_model())}
    stored = {k: v if k in quantised else v.to(WanDiT.storage_dtype(k, torch.bfloat16)).float()
              for k, v in SD.items()}
    swapped = quantize_model(source_model(dtype, stored), "fp8")
    assert torch.equal(run(dense), run(swapped))


@pytest.mark.parametrize("mix,dtype", [("Q8_0", torch.float32), ("Q8_0", torch.bfloat16),
                                       ("Q6_K", torch.float32), ("Q4_K_M", torch.bfloat16)])
def test_gguf_keep_and_dequantised(files, reference, mix, dtype):
    path = files(mix)
    ws = DequantWorkspace()
    kept = load_dit(path, CFG, dtype, install_quantized=make_installer(ws))
    assert all(isinstance(m, GGUFLinear) for _, m in block_linears(kept))
    assert kept.blocks[0].self_attn.q.bias.dtype == WanDiT.storage_dtype("blocks.0.self_attn.q.bias", dtype)
    y = run(kept)
    assert rel(y, reference) <= 1.5 * weight_error(kept) + FLOOR[dtype]
    assert len(ws._buffers) == 3  # [d, d], [ffn, d], [d, ffn]: one each, shared by all blocks
    # --weights bf16 / fp32 on a GGUF file: dequantised at load, plain linears, same numbers.
    dense = load_dit(path, CFG, dtype, install_quantized=make_installer(dequantize_to=dtype))
    assert not any(isinstance(m, GGUFLinear) for _, m in block_linears(dense))
    assert torch.equal(run(dense), y)


def test_install_quantized_details():
    with torch.device("meta"):
        model = WanDiT(CFG)
    bias = model.blocks[0].ffn[0].bias
    q = quantize_gguf(SD["blocks.0.ffn.0.weight"], "Q8_0")
    install_quantized(model, "blocks.0.ffn.0.weight", q)
    assert isinstance(model.blocks[0].ffn[0], GGUFLinear) and model.blocks[0].ffn[0].bias is bias
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.2\.weight.*\(512, 256\).*\(256, 512\)"):
        install_quantized(model, "blocks.0.ffn.2.weight", q)
    # A quantised tensor that is not a Linear weight is dequantised into the parameter.
    install_quantized(model, "blocks.1.modulation", quantize_gguf(SD["blocks.1.modulation"], "Q8_0"))
    assert model.blocks[1].modulation.shape == (1, 6, 256) and not model.blocks[1].modulation.is_meta
    with pytest.raises(CheckpointError, match="no matching module"):
        install_quantized(model, "blocks.9.ffn.0.weight", q)


def test_quantize_model_modes_and_refusal():
    with pytest.raises(InputError, match="fp4"):
        quantize_model(source_model(), "fp4")
    model = quantize_model(source_model(), "int8")
    assert quantize_model(model, "keep") is model


@pytest.mark.parametrize("mode", ["bf16", "fp8"])
def test_quantize_model_converts_kept_gguf_layers(mode):
    """--weights bf16/fp8 on a GGUF expert loaded with install_quantized: per-layer conversion."""
    model = source_model(torch.bfloat16)
    for name, lin in list(block_linears(model)):
        install_quantized(model, name + ".weight", quantize_gguf(lin.weight, "Q8_0"))
    kept_out = run(model)
    deq = {n: m.dequantized(torch.float32) for n, m in block_linears(model)}
    quantize_model(model, mode)
    for name, m in block_linears(model):
        if mode == "bf16":
            assert m.weight.dtype == torch.bfloat16 and torch.equal(m.weight, deq[name].bfloat16())
        else:
            assert isinstance(m, FP8Linear)
    if mode == "bf16":  # bf16 compute: bf16-stored dequantised weights give identical outputs
        assert torch.equal(run(model), kept_out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_file_kept_in_fp8(files, dtype):
    from wanmoe.loading.containers import open_tensors
    from wanmoe.loading.fp8_scaled import KeepScaledFP8Source

    out = files("fp8")
    kept = load_dit(KeepScaledFP8Source(open_tensors(out)), CFG, dtype, key_map=lambda n: n,
                    install_quantized=make_installer())
    assert all(isinstance(m, FP8Linear) for _, m in block_linears(kept))
    assert torch.equal(run(kept), run(load_dit(out, CFG, dtype)))  # same numbers as dequantised at load


def test_keep_source_reads_comfy_legacy_fp8(tmp_path):
    from wanmoe.loading.containers import open_tensors
    from wanmoe.loading.fp8_scaled import KeepScaledFP8Source
    from wanmoe.runtime.quant.apply import FP8Weight

    w = torch.randn(8, 16)
    q = (w / 0.01).to(torch.float8_e4m3fn)
    save_file({"blocks.0.ffn.0.weight": q, "blocks.0.ffn.0.scale_weight": torch.tensor(0.01),
               "blocks.0.ffn.0.bias": torch.zeros(8), "scaled_fp8": torch.zeros(0)},
              str(tmp_path / "comfy.safetensors"))
    src = KeepScaledFP8Source(open_tensors(tmp_path / "comfy.safetensors"))
    assert sorted(src.keys()) == ["blocks.0.ffn.0.bias", "blocks.0.ffn.0.weight"]
    assert src.dtype("blocks.0.ffn.0.weight") == "FP8"
    got = src.get("blocks.0.ffn.0.weight")
    assert isinstance(got, FP8Weight) and got.scale.shape == (8, 1)
    # ComfyUI's rule: w = weight.float() * scale_weight
    assert torch.equal(src.get("blocks.0.ffn.0.weight", torch.float32), q.float() * torch.tensor(0.01))



def test_keep_source_refuses_what_it_cannot_keep(tmp_path):
    from wanmoe.loading.containers import open_tensors
    from wanmoe.loading.fp8_scaled import KeepScaledFP8Source

    e5 = torch.randn(8, 16).to(torch.float8_e5m2)
    save_file({"a.weight": e5, "a.scale_weight": torch.tensor(2.0)}, str(tmp_path / "e5.safetensors"))
    with pytest.raises(CheckpointError, match=r"'a\.weight'.*float8_e5m2"):
        KeepScaledFP8Source(open_tensors(tmp_path / "e5.safetensors"))
    save_file({"a.weight": torch.zeros(8, 16, dtype=torch.uint8), "a.weight_scale": torch.ones(1),
               "a.weight_scale_2": torch.ones(1)}, str(tmp_path / "nvfp4.safetensors"))
    with pytest.raises(CheckpointError, match="cannot be kept quantised"):
        KeepScaledFP8Source(open_tensors(tmp_path / "nvfp4.safetensors"))
