"""`wanmoe generate --per-token-time` switches every expert to the official per-token layout."""

from safetensors.torch import load_file
from tolerance import assert_close_rel

from wanmoe.cli import main
from wanmoe.models.dit import WanDiT


_FORWARD = WanDiT.forward


def _run(tmp_path, name, extra, monkeypatch, seen):
    real = _FORWARD

    def spy(self, *a, **k):
        seen.append(self.per_token_time)
        return real(self, *a, **k)

    monkeypatch.setattr(WanDiT, "forward", spy)
    lat = tmp_path / f"{name}.safetensors"
    rc = main(["generate", "a red ball moves to the right", "--seed", "3", "--steps", "3",
               "--out", str(tmp_path / f"{name}.mp4"), "--save-latents", str(lat), "--quiet",
               "--device", "cpu", *extra])
    assert rc == 0
    return next(iter(load_file(str(lat)).values()))


def test_per_token_time_flag_reaches_the_experts_and_matches_in_fp32(tmp_path, monkeypatch):
    off, on = [], []
    a = _run(tmp_path, "a", [], monkeypatch, off)
    b = _run(tmp_path, "b", ["--per-token-time"], monkeypatch, on)
    assert off and not any(off) and on and all(on)
    # same formula: in fp32 the two layouts agree to float rounding (B vs B*L GEMM rows);
    # measured max|diff| / max|ref| over --seed 0..3: 1.1e-6 .. 1.7e-6 (max|ref| ~7.5)
    assert_close_rel(b, a, rtol=5e-6)
