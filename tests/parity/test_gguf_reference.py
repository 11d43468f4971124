"""GGUF parity with diffusers: its torch dequantisers, and a tiny Wan DiT run from one GGUF file.

The file is read for diffusers by gguf's own `GGUFReader` (independent of our reader) and its
quantised tensors go into diffusers' `GGUFLinear` / `GGUFParameter`, as
`from_single_file(..., GGUFQuantizationConfig)` builds them (that path itself needs
`accelerate`, which is not a dependency here). Ours: `load_dit` with `install_quantized`.

Tolerances: diffusers dequantises in float16 (the fp16 block scales are never upcast), ours in
float32 like ggml, so each weight differs by up to ~2^-11 of its block's scale terms:
|diff| <= 2^-9 * max|w| per tensor covers the <= 3 fp16 roundings. The model outputs then
differ by ~1e-4 relative; bound 2e-3 (fp32 compute). The unquantised DiT parity itself is
1e-5 (tests/parity/test_dit_diffusers.py).
"""

import numpy as np
import pytest
import torch
from helpers_quant import CFG, gguf_tensors, random_blocks, tiny_state
from tolerance import rel_err

diffusers = pytest.importorskip("diffusers")
gguf = pytest.importorskip("gguf")
dq = pytest.importorskip("diffusers.quantizers.gguf.utils")

from wanmoe.loading.components import load_dit  # noqa: E402
from wanmoe.loading.gguf import write_gguf  # noqa: E402
from wanmoe.loading.keymaps.dit import official_to_diffusers  # noqa: E402
from wanmoe.runtime.quant.apply import make_installer  # noqa: E402
from wanmoe.runtime.quant.gguf_dequant import dequantize  # noqa: E402
from wanmoe.runtime.quant.linear import DequantWorkspace  # noqa: E402
from wanmoe.runtime.quant.quantize import quantize_gguf  # noqa: E402

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _quantised_weights(qtype, rows=8, cols=512, seed=0):
    """Realistic blocks: ggml's quantiser where gguf-py has one, ours for the K-quants."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    qt = gguf.GGMLQuantizationType[qtype]
    try:
        return gguf.quants.quantize(w.numpy(), qt)
    except NotImplementedError:
        if qtype in ("Q4_K", "Q6_K"):
            return quantize_gguf(w, qtype).data.numpy()
        return random_blocks(qtype, rows, cols, seed, scale=1e-3)  # Q2_K/Q3_K/Q5_K: random bits


@pytest.mark.parametrize("qtype", TYPES)
def test_dequant_matches_diffusers(qtype):
    raw = _quantised_weights(qtype)
    param = dq.GGUFParameter(torch.from_numpy(raw), quant_type=gguf.GGMLQuantizationType[qtype])
    ref = dq.dequantize_gguf_tensor(param)
    ours = dequantize(torch.from_numpy(raw), qtype, (8, 512))
    assert ref.shape == ours.shape
    assert rel_err(ref.float(), ours) <= 2**-9


def _diffusers_model_from_gguf(path):
    cfg = CFG
    ref = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=cfg.eps).eval()
    reader = gguf.GGUFReader(str(path))
    dense, quant = {}, {}
    for t in reader.tensors:
        name = official_to_diffusers(t.name)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            dense[name] = torch.from_numpy(np.array(t.data)).reshape(ref.state_dict()[name].shape)
        else:
            quant[name] = dq.GGUFParameter(torch.from_numpy(np.array(t.data)), quant_type=t.tensor_type)
    ref.load_state_dict({**dense, **{k: ref.state_dict()[k] for k in quant}}, strict=True)
    for name, param in quant.items():
        path_, _ = name.rsplit(".", 1)
        old = ref.get_submodule(path_)
        new = dq.GGUFLinear(old.in_features, old.out_features, bias=True, compute_dtype=torch.float32)
        new.weight, new.bias = param, old.bias
        parent, _, child = path_.rpartition(".")
        setattr(ref.get_submodule(parent), child, new)
    return ref


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
@torch.no_grad()
def test_tiny_dit_matches_diffusers_gguf(tmp_path, mix):
    g = torch.Generator().manual_seed(0)
    path = write_gguf(tmp_path / f"{mix}.gguf", gguf_tensors(tiny_state(generator=g), mix))
    ours = load_dit(path, CFG, torch.float32, install_quantized=make_installer(DequantWorkspace()))
    ref = _diffusers_model_from_gguf(path)
    assert isinstance(ref.blocks[0].attn1.to_q, dq.GGUFLinear)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    ctx = torch.randn(10, 32, generator=g)
    t = torch.tensor([500])
    a = ours(x, t, [ctx])
    b = ref(x, t, torch.cat([ctx, ctx.new_zeros(CFG.text_len - 10, 32)])[None]).sample
    diff = rel_err(a, b)
    print(f"{mix}: max rel diff vs diffusers GGUF {diff:.2e}")
    assert diff < 2e-3
