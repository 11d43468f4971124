"""`wanmoe plan`: device names, the JSON schema, fit decisions from the memory model."""

import json

import pytest

from wanmoe import cli
from wanmoe.errors import InputError
from wanmoe.runtime.devices import DEVICES, find_device, parse_bytes

ROW_KEYS = {"weights", "offload", "flags", "vram_peak_bytes", "ram_peak_bytes", "seconds_per_step",
            "seconds_total", "fits", "reason"}


@pytest.mark.parametrize("name, want", [("RTX 4090", "RTX 4090 24G"), ("4090", "RTX 4090 24G"),
                                        ("h100", "H100 80G"), ("A100 40GB", "A100 40G"),
                                        ("NVIDIA GeForce RTX 3060", "RTX 3060 12G"),
                                        ("4070 Ti Super", "RTX 4070 Ti Super 16G")])
def test_device_names_as_people_write_them(name, want):
    assert find_device(name).name == want


def test_bad_device_and_sizes_are_input_errors():
    with pytest.raises(InputError, match="RTX 4090 24G"):
        find_device("voodoo 2")
    assert parse_bytes("16GB", "--vram") == 16 * 2**30
    assert parse_bytes("12000MB", "--vram") == 12000 * 2**20
    for bad in ("sixteen", "-1GB", "0"):
        with pytest.raises(InputError, match="--vram"):
            parse_bytes(bad, "--vram")


def test_json_rows_for_a_24g_card(capsys):
    assert cli.main(["plan", "--gpu", "4090", "--size", "832*480", "--ram", "64GB", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "t2v-A14B" and doc["device"] == "RTX 4090 24G"
    assert doc["request"]["size"] == "832*480" and doc["request"]["frames"] == 81
    assert len(doc["rows"]) == 8 * 3 and all(set(r) == ROW_KEYS for r in doc["rows"])
    rows = {(r["weights"], r["offload"]): r for r in doc["rows"]}
    # both bf16 experts resident (58 GB) cannot fit 24 GB; streamed blocks do
    assert not rows["bf16", "none"]["fits"] and "VRAM" in rows["bf16", "none"]["reason"]
    assert rows["fp8", "blocks:2"]["fits"]
    # both bf16 experts in host RAM (~58 GB + umT5) do not fit 64 GB
    assert not rows["bf16", "blocks:2"]["fits"] and "RAM" in rows["bf16", "blocks:2"]["reason"]
    assert all(r["seconds_total"] > r["seconds_per_step"] > 0 for r in doc["rows"])


def test_text_table_and_unknown_model(capsys):
    assert cli.main(["plan", "--vram", "12GB", "--size", "832*480"]) == 0
    out = capsys.readouterr().out
    assert "blocks:2" in out and "best: --weights" in out
    assert cli.main(["plan", "--model", "t2v-a99b"]) == 2
    assert "t2v-a14b" in capsys.readouterr().err


def test_devices_table_lists_every_device(capsys):
    assert cli.main(["plan", "--devices"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DEVICES)
    assert "H200 141G" in out.splitlines()[-1] and "bf16 none" in out.splitlines()[-1]


def test_memory_preflight_refuses_with_numbers_and_the_nearest_setting():
    import torch

    from wanmoe.configs import T2V_A14B
    from wanmoe.plan import memory_preflight
    from wanmoe.request import runtime_config
    from wanmoe.validate import settings_for

    settings = settings_for(T2V_A14B, size="832*480", seed=0)
    rt = runtime_config("cpu", "bf16", offload="none")
    with pytest.raises(InputError) as err:
        memory_preflight(T2V_A14B, rt, settings, 24 * 2**30)
    msg = str(err.value)
    assert "--weights bf16 --offload none" in msg and "GB VRAM" in msg
    assert "nearest that fits: --weights bf16 --offload blocks:2" in msg and "\n" not in msg
    memory_preflight(T2V_A14B, runtime_config("cpu", "bf16", offload="blocks:2"), settings, 24 * 2**30)
    # GGUF files and auto are decided later: not checked here
    memory_preflight(T2V_A14B, rt, settings, 2**30, expert_files=["high.gguf"])
