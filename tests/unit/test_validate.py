"""User-input validation: rules and messages from spec §1.3/§1.4 and §3."""

import math

import pytest
import torch

from wanmoe.configs import T2V_A14B, TI2V_5B
from wanmoe.errors import InputError
from wanmoe import validate as V


def test_parse_size_official_and_x_spelling():
    assert V.parse_size("1280*720") == (1280, 720)  # official spelling is W*H
    assert V.parse_size("832x480") == (832, 480)
    with pytest.raises(InputError, match="WIDTH\\*HEIGHT"):
        V.parse_size("1280,720")


@pytest.mark.parametrize("preset,size,msg", [
    (T2V_A14B, (1000, 720), "width 1000 is not a multiple of 16.*use 992 or 1008"),
    (T2V_A14B, (1280, 8), "height 8 is not a multiple of 16.*use 16"),
    (TI2V_5B, (1280, 720), "height 720 is not a multiple of 32.*use 704 or 736"),
])
def test_size_multiple_names_value_and_neighbours(preset, size, msg):
    with pytest.raises(InputError, match=msg):
        V.check_size(*size, preset)


def test_official_sizes_pass():
    for preset in (T2V_A14B, TI2V_5B):
        for w, h in preset.sizes:
            V.check_size(w, h, preset)


@pytest.mark.parametrize("frames,msg", [(80, "4n\\+1; use 77 or 81"), (0, ">= 1"), (2, "use 1 or 5")])
def test_frames_must_be_4n_plus_1(frames, msg):
    with pytest.raises(InputError, match=msg):
        V.check_frames(frames)


def test_frames_valid_values():
    for f in (1, 5, 81, 121):
        V.check_frames(f)


def test_steps_shift():
    with pytest.raises(InputError, match="steps 0"):
        V.check_steps(0)
    with pytest.raises(InputError, match="shift"):
        V.check_shift(0.0)
    with pytest.raises(InputError, match="shift"):
        V.check_shift(float("nan"))


def test_guide_scale_single_value_applies_to_both_experts():
    # spec §1.4: a CLI guide scale is used for both experts
    assert V.parse_guide_scale("5", 2) == (5.0, 5.0)
    assert V.parse_guide_scale("4.0,3.0", 2) == (4.0, 3.0)
    with pytest.raises(InputError, match="2 values.*1 expert"):
        V.parse_guide_scale("4,3", 1)
    with pytest.raises(InputError, match="not a number"):
        V.parse_guide_scale("4;3", 2)


def test_boundary_fraction_and_snr():
    assert V.check_boundary(None, None, T2V_A14B) == T2V_A14B.boundary
    # spec §3: boundary 0.875 <-> SNR 1/49
    assert math.isclose(V.check_boundary(None, 1 / 49, T2V_A14B), 0.875, rel_tol=1e-12)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        V.check_boundary(1.0, None, T2V_A14B)
    with pytest.raises(InputError, match="not both"):
        V.check_boundary(0.9, 0.01, T2V_A14B)
    with pytest.raises(InputError, match="single-expert"):
        V.check_boundary(0.9, None, TI2V_5B)


def test_solver_seed_dtype_weights():
    with pytest.raises(InputError, match="unipc, dpm\\+\\+, euler"):
        V.check_solver("ddim")
    assert 0 <= V.resolve_seed(-1) <= V.SEED_MAX
    assert V.resolve_seed(42) == 42
    with pytest.raises(InputError, match="seed -5"):
        V.resolve_seed(-5)
    assert V.parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(InputError, match="bf16, fp32"):
        V.parse_dtype("fp16")
    with pytest.raises(InputError, match="bf16, fp8, int8, keep"):
        V.check_weights("q4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(InputError, match="CUDA is not available.*--device cpu"):
        V.parse_device("cuda")
    assert V.parse_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="not a device name"):
        V.parse_device("gpu0")


def test_settings_defaults_are_the_preset_defaults():
    s = V.settings_for(T2V_A14B, seed=3)
    assert (s.width, s.height, s.frames, s.steps, s.shift) == (1280, 720, 81, 40, 12.0)
    assert s.guide_scale == (4.0, 3.0) and s.boundary == 0.875 and s.solver == "unipc"
    s = V.settings_for(TI2V_5B, seed=3)
    assert (s.size, s.frames, s.steps, s.shift, s.guide_scale, s.boundary) == (
        (1280, 704), 121, 50, 5.0, (5.0,), None)


def test_vae_tile_parsing():
    from wanmoe.validate import parse_vae_tile
    from wanmoe.vae.tiling import TileSpec

    assert parse_vae_tile(None) is None
    assert parse_vae_tile("45,80,8") == TileSpec(45, 80, 8)
    for bad in ("45,80", "a,b,c", "45,80,-1"):
        with pytest.raises(InputError, match="--vae-tile"):
            parse_vae_tile(bad)
    with pytest.raises(InputError, match="overlap 30"):  # TileSpec's own rule
        parse_vae_tile("45,80,30")
