"""The communication model counts what the code sends (shapes of the real A14B)."""

from __future__ import annotations

import json
import math

from wanmoe.configs import T2V_A14B
from wanmoe.parallel.comm_model import (cfg_bytes, fsdp_bytes, shapes_for, ulysses_bytes)


def test_a14b_shapes():
    s720 = shapes_for(T2V_A14B, 1280, 720, 81)
    assert s720.tokens == 21 * 45 * 80 == 75600
    assert s720.latent_elems == 16 * 21 * 90 * 160
    assert shapes_for(T2V_A14B, 832, 480, 81).tokens == 21 * 30 * 52


def test_block_params_match_the_release_manifest(manifests_dir):
    """FSDP gathers the block parameters: the model's count equals the real checkpoint's."""
    m = json.loads((manifests_dir / "official-wan22-t2v-a14b-dit.json").read_text())
    blocks = sum(math.prod(t["shape"]) for t in m["tensors"] if t["name"].startswith("blocks."))
    assert shapes_for(T2V_A14B, 1280, 720, 81).block_params == blocks


def test_ulysses_bytes_are_the_all_to_all_chunks():
    """U=4, 720P: each all-to-all sends 3 of its 4 chunks of a [L/4, 40, 128] bf16 tensor;
    4 per block, 40 blocks, 2 forwards, plus 3 copies of the fp32 [L/4, d] shard."""
    s = shapes_for(T2V_A14B, 1280, 720, 81)
    shard = 75600 // 4
    chunk = shard * (40 // 4) * 128 * 2  # one rank's [L/U, N/U, hd] bf16 piece
    expected = 2 * (4 * 40 * 3 * chunk + 3 * shard * 5120 * 4)
    assert ulysses_bytes(s, 4, forwards=2) == expected
    assert ulysses_bytes(s, 1, forwards=2) == 0
    assert ulysses_bytes(shapes_for(T2V_A14B, 832, 480, 81), 8, 1) > 0  # 32760 = 8 x 4095


def test_cfg_and_fsdp_bytes():
    s = shapes_for(T2V_A14B, 1280, 720, 81)
    assert cfg_bytes(s) == 16 * 21 * 90 * 160 * 4
    assert fsdp_bytes(s, 1, forwards=2) == 0
    assert fsdp_bytes(s, 2, forwards=2) == s.block_params * 2  # half of 2 forwards x bf16
