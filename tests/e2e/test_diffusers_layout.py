"""The tiny diffusers-layout folder is a real diffusers/transformers checkpoint.

diffusers builds each model from the folder's config.json and loads its safetensors strictly
(`from_pretrained` would need `accelerate` for WanTransformer3DModel); transformers loads the
text encoder with `from_pretrained`. Every tensor equals the official tensor it was renamed from.
"""

import pytest
import torch

from wanmoe.loading.keymaps.dit import official_to_diffusers
from wanmoe.loading.keymaps.t5 import official_to_hf
from wanmoe.loading.keymaps.vae import official_to_diffusers as vae_official_to_diffusers
from wanmoe.loading.containers import open_tensors

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


def _official(path):
    with open_tensors(path) as src:
        return {k: src.get(k) for k in src.keys()}


def _diffusers_model(cls, folder):
    from safetensors.torch import load_file

    model = cls.from_config(cls.load_config(folder))
    model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)
    return model


def _assert_same(model_state: dict, expected: dict):
    assert set(model_state) >= set(expected)
    for name, t in expected.items():
        assert torch.equal(model_state[name].to(t.dtype), t), name


def test_transformers_load_like_the_official_files(a14b_dir, a14b_diffusers_dir):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    for sub, folder in (("transformer", "high_noise_model"), ("transformer_2", "low_noise_model")):
        model = _diffusers_model(WanTransformer3DModel, a14b_diffusers_dir / sub)
        off = _official(a14b_dir / folder)
        _assert_same(model.state_dict(), {official_to_diffusers(k): v for k, v in off.items()})
    vae = _diffusers_model(AutoencoderKLWan, a14b_diffusers_dir / "vae")
    off = _official(a14b_dir / "Wan2.1_VAE.pth")
    _assert_same(vae.state_dict(), {vae_official_to_diffusers(k, "2.1"): v for k, v in off.items()})


def test_text_encoder_and_tokenizer_load_in_transformers(a14b_dir, a14b_diffusers_dir):
    from transformers import AutoTokenizer, UMT5EncoderModel

    model = UMT5EncoderModel.from_pretrained(a14b_diffusers_dir / "text_encoder", torch_dtype=torch.bfloat16)
    off = _official(a14b_dir / "models_t5_umt5-xxl-enc-bf16.pth")
    _assert_same(model.state_dict(), {official_to_hf(k): v for k, v in off.items()})
    tok = AutoTokenizer.from_pretrained(a14b_diffusers_dir / "tokenizer")
    ids = tok("a red ball").input_ids
    assert ids[-1] == 1 and 0 not in ids  # umT5 convention: EOS id 1 appended, pad id 0 unused
