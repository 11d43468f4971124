"""--text-kv-cache on the command line: on and off give the same latents; a bad value is refused."""

import torch
from safetensors.torch import load_file

from wanmoe import cli


def test_text_kv_cache_flag_is_exact(a14b_dir, tmp_path, capsys):
    base = ["generate", "a red ball rolls to the right", "--ckpt-dir", str(a14b_dir), "--size",
            "64*64", "--frames", "5", "--steps", "4", "--seed", "2", "--device", "cpu", "--quiet"]
    for mode in ("on", "off"):
        assert cli.main(base + ["--text-kv-cache", mode, "--out", str(tmp_path / f"{mode}.mp4"),
                                "--save-latents", str(tmp_path / f"{mode}.safetensors")]) == 0
    assert torch.equal(load_file(tmp_path / "on.safetensors")["latents"],
                       load_file(tmp_path / "off.safetensors")["latents"])
    capsys.readouterr()
    try:
        code = cli.main(base + ["--text-kv-cache", "sometimes"])
    except SystemExit as e:  # argparse's own refusal of a choice
        code = e.code
    assert code == 2 and "--text-kv-cache" in capsys.readouterr().err
