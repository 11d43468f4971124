"""outputs.py (atomic writes, umask modes, all-or-nothing plans) and preflight.py (memory floor,
distinct experts)."""

import os
import stat

import pytest
import torch

from wanmoe.configs import T2V_A14B, TI2V_5B
from wanmoe.errors import InputError
from wanmoe.outputs import OutputPlan, atomic_path, partial_files
from wanmoe.preflight import check_distinct_experts, check_memory, request_memory


def _mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_path_uses_umask_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    old = os.umask(0o027)
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    target.chmod(0o604)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"new" and not partial_files(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"newer")
    assert _mode(target) == 0o604  # a replaced file keeps its mode, as open() would


def test_plan_writes_all_or_nothing_and_removes_folders_it_made(tmp_path):
    a, b = tmp_path / "new" / "deep" / "a.txt", tmp_path / "new" / "b.txt"
    plan = OutputPlan({"--a": a, "--b": b, "--c": None})
    plan.probe()
    assert not (tmp_path / "new").exists()  # probing creates no folder

    def fail(_p):
        raise OSError("disk full")

    with pytest.raises(OSError):
        plan.write({"--a": lambda p: p.write_text("A"), "--b": fail})
    assert not (tmp_path / "new").exists()
    plan.write({"--a": lambda p: p.write_text("A"), "--b": lambda p: p.write_text("B")})
    assert a.read_text() == "A" and b.read_text() == "B"
    assert sorted(x.name for x in (tmp_path / "new").iterdir()) == ["b.txt", "deep"]


def test_plan_refuses_two_flags_for_one_file_and_a_folder_target(tmp_path):
    with pytest.raises(InputError, match="same file"):
        OutputPlan({"--out": tmp_path / "x", "--save-strip": tmp_path / "x"}).probe()
    with pytest.raises(InputError, match="is a folder"):
        OutputPlan({"--out": tmp_path}).probe()


def test_memory_floor_passes_official_requests_and_refuses_absurd_ones():
    # official A14B 720p: a few GB beyond the weights, far below an 80 GB GPU
    need = sum(request_memory(T2V_A14B, 1280, 720, 81, torch.bfloat16).values())
    assert 2**30 < need < 16 * 2**30
    need5b = sum(request_memory(TI2V_5B, 1280, 704, 121, torch.bfloat16).values())
    assert need5b < 16 * 2**30
    with pytest.raises(InputError, match=r"needs at least .* but host memory has"):
        check_memory(T2V_A14B, 100000, 100000, 81, torch.device("cpu"), torch.float32)


def test_same_expert_file_refused(tmp_path):
    f = tmp_path / "e.safetensors"
    f.write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(f)
    with pytest.raises(InputError, match="same file"):
        check_distinct_experts({"high_noise": f, "low_noise": tmp_path / "link.safetensors"})
    check_distinct_experts({"dense": f})
