"""`wanmoe inspect` on a wanmoe-native folder names each expert's role from wanmoe.json."""

import json

from wanmoe.loading.inspect import detect
from wanmoe.pipeline import DEMO_DIR


def test_native_folder_names_expert_roles_and_heads():
    det = detect(DEMO_DIR)
    experts = json.loads((DEMO_DIR / "wanmoe.json").read_text())
    assert det.format == "wanmoe-dir"
    for name in ("high_noise", "low_noise"):
        part = det.parts[name]
        assert f"expert role: {name} (named by the wanmoe-dir layout)" in part.notes
        assert not any("cannot be told" in n for n in part.notes)
        assert part.dims["num_heads"] == det.dims["num_heads"] == 3
    assert "high_noise" in json.dumps(experts)


def test_single_expert_file_still_says_the_role_cannot_be_told():
    part = detect(DEMO_DIR / "high_noise.safetensors")
    assert any("cannot be told" in n for n in part.notes)
