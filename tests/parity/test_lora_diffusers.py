"""Our LoRA merge vs diffusers `WanPipeline.load_lora_weights` (PEFT) on a tiny two-expert model.

Every layout diffusers reads is written by the test with random factors, one file per expert
(the HIGH file into `transformer`, the LOW file with `load_into_transformer_2=True`), at
strengths other than 1. Two comparisons, both in fp32 on CPU:

* transformer outputs: diffusers runs the LoRA as PEFT side branches (base + s·B(A x)); we merge
  into the weights. Tolerance 2e-5 relative (max|diff| / max|ref|): the fp32-vs-float64 timestep
  sinusoid and RoPE account for ~5e-6 alone (tests/parity/test_dit_diffusers.py), the branch vs
  merge summation order for ~1e-7.
* merged weights after `fuse_lora` + `unload_lora_weights`: tolerance 1e-6 relative per
  parameter. diffusers folds alpha/rank into A and B (powers of two split) and PEFT fuses
  W + s·(B @ A); we compute W + (s·alpha/r)·(up @ down): same math, one fp32 rounding apart.
Measured (pytest -s): outputs 3.1e-6..4.1e-6 relative, the same as without a LoRA; merged
weights bit-identical for the layouts without alpha, 7.9e-8 with alpha 3 at rank 4.
"""

from __future__ import annotations

import pytest
import torch
from helpers_dit import TINY, diffusers_kwargs, randomize_, rel
from helpers_lora import EXTRA_LINEARS, block_modules, lora_factors, write_layout

from wanmoe.loading.keymaps.dit import diffusers_to_official, official_to_diffusers
from wanmoe.lora import load_lora, merge_loras
from wanmoe.models.dit import WanDiT

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' LoRA loading runs on PEFT

STRENGTHS = {"high": 0.7, "low": 1.3}


def _experts():
    ours = {"high": randomize_(WanDiT(TINY), 1).eval(), "low": randomize_(WanDiT(TINY), 2).eval()}
    theirs = {}
    for name, model in ours.items():
        ref = diffusers.WanTransformer3DModel(**diffusers_kwargs(TINY)).eval()
        ref.load_state_dict({official_to_diffusers(k): v for k, v in model.state_dict().items()})
        theirs[name] = ref
    return ours, theirs


def _files(layout: str, state: dict) -> dict[str, dict]:
    """One LoRA state dict per expert in `layout` (alpha != rank where the layout carries alpha)."""
    modules = block_modules(TINY.num_layers)
    files = {}
    for seed, name in enumerate(("high", "low")):
        factors = lora_factors(state[name], modules, rank=4, seed=10 + seed)
        alpha = None if layout in ("diffusers", "comfy_AB") else 3.0
        sd = write_layout(factors, layout, alpha)
        if layout == "comfy_down_up":
            # extras diffusers converts too: embeddings/head low-rank pairs (no alpha), bias deltas
            extra = write_layout(lora_factors(state[name], EXTRA_LINEARS, rank=2, seed=20 + seed),
                                 layout)
            sd.update(extra)
            g = torch.Generator().manual_seed(30 + seed)
            for m in ("blocks.0.self_attn.q", "blocks.1.ffn.2", "time_projection.1"):
                out = state[name][f"{m}.weight"].shape[0]
                sd[f"diffusion_model.{m}.diff_b"] = 0.05 * torch.randn(out, generator=g)
        files[name] = sd
    return files


def _pipeline(theirs):
    return diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                 transformer=theirs["high"], transformer_2=theirs["low"],
                                 boundary_ratio=0.875)


def _padded(ctx):
    return torch.stack([torch.cat([c, c.new_zeros(TINY.text_len - c.shape[0], c.shape[1])]) for c in ctx])


@pytest.mark.parametrize("layout", ["diffusers", "comfy_AB", "comfy_down_up", "musubi"])
@torch.no_grad()
def test_merge_matches_diffusers_pipeline(layout, tmp_path):
    from safetensors.torch import save_file

    ours, theirs = _experts()
    state = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in ours.items()}
    files = _files(layout, state)
    paths = {}
    for name, sd in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(sd, str(paths[name]))

    pipe = _pipeline(theirs)
    # low_cpu_mem_usage=False: PEFT turns lora_bias on for every layer once one file has a
    # diff_b; with the default True the bias of layers without one stays on the meta device
    kw = dict(low_cpu_mem_usage=False)
    pipe.load_lora_weights(str(paths["high"]), adapter_name="high", **kw)
    pipe.load_lora_weights(str(paths["low"]), adapter_name="low", load_into_transformer_2=True, **kw)
    pipe.set_adapters(["high", "low"], adapter_weights=[STRENGTHS["high"], STRENGTHS["low"]])

    keys = set(state["high"])
    for name, model in ours.items():
        merge_loras(model, [(load_lora(paths[name], keys), STRENGTHS[name])])

    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(1, 16, 2, 6, 4, generator=g), [torch.randn(7, 32, generator=g)]
    for name, t in (("high", 937), ("low", 625)):
        a = ours[name](x, torch.tensor([t]), ctx)
        b = theirs[name](x, torch.tensor([t]), _padded(ctx)).sample
        base = WanDiT(TINY)
        base.load_state_dict(state[name])
        moved = rel(base(x, torch.tensor([t]), ctx), b)
        print(f"{layout} {name}: output rel diff {rel(a, b):.2e} (LoRA moved the output by {moved:.2e})")
        assert moved > 1e-2  # the LoRA does change the output
        assert rel(a, b) < 2e-5  # measured 3.1e-6..4.1e-6: the no-LoRA level (sinusoid/RoPE)

    pipe.fuse_lora(components=["transformer", "transformer_2"])
    pipe.unload_lora_weights()
    worst = 0.0
    for name in ("high", "low"):
        fused = {diffusers_to_official(k): v for k, v in theirs[name].state_dict().items()}
        for k, v in ours[name].state_dict().items():
            worst = max(worst, rel(v, fused[k]))
    print(f"{layout}: merged weights max rel diff {worst:.2e}")
    assert worst < 1e-6  # measured 0 without alpha, 7.9e-8 with alpha 3 / rank 4
