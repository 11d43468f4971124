"""Wan VAE construction: real-size meta build vs the official manifests, no buffers, bf16 params."""

import json

import pytest
import torch
from helpers_vae import one_thread, tiny_cfg  # noqa: F401  (one_thread: autouse fixture)

from wanmoe.configs import WAN21_VAE, WAN22_VAE
from wanmoe.vae import WanVAE21, WanVAE22, build_vae

# encoder / decoder parameter split published in spec §6.2 / §6.3 (the rest: conv1 + conv2)
SPEC_SPLIT = {"2.1": (53_595_872, 73_295_331), "2.2": (149_627_776, 555_049_228)}


@pytest.mark.parametrize("cfg, manifest", [(WAN21_VAE, "official-wan21-vae.json"),
                                           (WAN22_VAE, "official-wan22-vae.json")])
def test_meta_build_matches_official_manifest(cfg, manifest, manifests_dir):
    man = json.loads((manifests_dir / manifest).read_text())
    with torch.device("meta"):
        vae = build_vae(cfg)
    ours = [(k, list(v.shape)) for k, v in vae.state_dict().items()]
    ref = [(t["name"], t["shape"]) for t in man["tensors"]]
    assert ours == ref  # same names, shapes and order as the official .pth
    assert sum(p.numel() for p in vae.parameters()) == man["summary"]["num_params"]
    enc = sum(p.numel() for p in vae.encoder.parameters())
    dec = sum(p.numel() for p in vae.decoder.parameters())
    assert (enc, dec) == SPEC_SPLIT[cfg.version]
    assert list(vae.buffers()) == []  # mean/std are computed at call time, never stored
    assert all(p.device.type == "meta" for p in vae.parameters())


def test_build_vae_dispatch_and_version_check():
    small = tiny_cfg("2.1", dim=2)
    assert isinstance(build_vae(small), WanVAE21)
    with torch.device("meta"):
        assert isinstance(build_vae(WAN22_VAE), WanVAE22)
        with pytest.raises(ValueError, match="version '2.2'"):
            WanVAE22(WAN21_VAE)


def test_bf16_params_run_fp32_math():
    """bf16-stored weights are cast to fp32 per op (the official float32 autocast): the result equals
    an fp32 model holding the same bf16-rounded values, exactly."""
    torch.manual_seed(0)
    cfg = tiny_cfg("2.1")
    fp32 = build_vae(cfg).eval()
    bf16 = build_vae(cfg).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    with torch.no_grad():
        for p in fp32.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        z = torch.randn(1, 16, 2, 2, 2)
        a, b = fp32.decode(z), bf16.decode(z)
        x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
        ea, eb = fp32.encode(x), bf16.encode(x)
    assert b.dtype == torch.float32 and eb.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(ea, eb)
