"""Demo VAE training stages: the decoder-only fine-tune leaves the latent space alone."""

import torch
from helpers_vae import one_thread  # noqa: F401  (autouse: one thread for the tiny convs, restored)

from wanmoe.demo.training import demo_run as D
from wanmoe.demo.training.common import load_state, save_state
from wanmoe.demo.training.vae_trainer import VAETrainConfig, skip_init


def _base(work, seed=0):
    from wanmoe.demo.preset import Z_DIM, demo_vae_config
    from wanmoe.vae import build_vae

    torch.manual_seed(seed)
    vae = build_vae(demo_vae_config((0.0,) * Z_DIM, (1.0,) * Z_DIM))
    skip_init(vae)
    with torch.no_grad():  # make the zero-initialised decoder branches non-trivial
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mean, std = [0.1 * i for i in range(Z_DIM)], [1.0 + 0.1 * i for i in range(Z_DIM)]
    save_state(work / "vae_base.pt", {"model": vae.state_dict(), "mean": mean, "std": std})
    return vae.state_dict(), mean, std


def test_decoder_stage_trains_only_the_decoder_and_keeps_the_latent_statistics(tmp_path):
    base, mean, std = _base(tmp_path)
    final = D.stage_decoder(tmp_path, VAETrainConfig(seed=0, log_every=1), steps=2)
    st = load_state(final)
    assert st["mean"] == mean and st["std"] == std
    enc = [k for k in base if k.startswith(("encoder.", "conv1."))]
    dec = [k for k in base if k.startswith(("decoder.", "conv2."))]
    assert enc and dec and len(enc) + len(dec) == len(base)
    for k in enc:  # the latents the DiT was trained on stay valid
        assert torch.equal(st["model"][k], base[k]), k
    assert any(not torch.equal(st["model"][k], base[k]) for k in dec)
    # the stage is skipped once vae_final.pt exists (resumable script)
    before = final.stat().st_mtime_ns
    assert D.stage_decoder(tmp_path, VAETrainConfig(seed=0), steps=2) == final
    assert final.stat().st_mtime_ns == before
    # the latents stage reads the encoder from vae_base.pt, equal to vae_final's
    base_enc = D.load_vae(tmp_path, "vae_base.pt").encoder.state_dict()
    k = next(iter(base_enc))
    assert torch.equal(base_enc[k], D.load_vae(tmp_path).encoder.state_dict()[k])


def test_train_cli_refuses_negative_decoder_steps(tmp_path, capsys):
    from wanmoe.cli import main

    rc = main(["train", "decoder", "--work", str(tmp_path), "--decoder-steps", "-1"])
    assert rc != 0 and "--decoder-steps is -1; it must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "vae_final.pt").exists()
