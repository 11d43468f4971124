"""--cache easy|mag: skipped DiT forwards through the block-runner hook (tiny A14B)."""

import itertools

import pytest
import torch

from wanmoe import cli
from wanmoe.errors import InputError
from wanmoe.pipeline import load_pipeline
from wanmoe.runtime.cache import CacheSpec, parse_cache

KW = dict(size="64*64", frames=5, steps=12, seed=1, progress=False)
PROMPT = "a red ball rolls to the right"


@pytest.fixture(scope="module")
def pipe(a14b_dir):
    return load_pipeline(a14b_dir, device="cpu")


@pytest.fixture(scope="module")
def plain(pipe):
    return pipe.generate(PROMPT, **KW)


def test_parse_cache():
    assert parse_cache("off") == CacheSpec() and not CacheSpec().enabled
    assert parse_cache("easy") == CacheSpec("easy", 0.05)
    assert parse_cache("MAG:0.06:3") == CacheSpec("mag", 0.06, 3)
    for bad in ("fast", "mag:x", "mag:0", "easy:0.1:2", "off:1", "mag:0.1:0", "mag:nan"):
        with pytest.raises(InputError, match="cache"):
            parse_cache(bad)


def test_cache_off_is_bit_identical(pipe, plain):
    assert torch.equal(pipe.generate(PROMPT, **KW, cache="off").latents, plain.latents)
    assert pipe.generate(PROMPT, **KW, cache="off").cache_stats == {}


@pytest.mark.parametrize("cache", ["mag:1.0:2", "easy:1.0"])  # thresholds that skip all they may
def test_skips_respect_the_rules_and_each_expert_keeps_its_state(pipe, plain, cache):
    res = pipe.generate(PROMPT, **KW, cache=cache)
    stats = res.cache_stats
    assert stats["forwards"] == 2 * KW["steps"] and stats["skipped"] > 0
    experts = res.expert_per_step
    first_of = {e: experts.index(e) for e in set(experts)}
    skipped_steps = {s for s, _, _, skip in pipe.cache_log if skip}
    # never the first step of an expert, never the last step of the run
    assert not skipped_steps & (set(first_of.values()) | {KW["steps"] - 1})
    # at most K = 2 skips in a row for each expert and guidance pass (cond 0, uncond 1)
    for key, entries in itertools.groupby(sorted(pipe.cache_log, key=lambda e: (e[1], e[2], e[0])),
                                          key=lambda e: (e[1], e[2])):
        runs = [len(list(g)) for skip, g in itertools.groupby(e[3] for e in entries) if skip]
        assert max(runs, default=0) <= 2, key
    # a skipped step reuses only its own expert's residual: the first low-noise step computes
    low = first_of["low_noise"]
    assert [e[3] for e in pipe.cache_log if e[0] == low] == [False, False]
    drift = ((res.latents - plain.latents).norm() / plain.latents.norm()).item()
    print(f"{cache}: skipped {stats['skipped']}/{stats['forwards']}, latent drift {drift:.2e}")
    assert 0 < drift < 0.2


def test_cli_reports_skips_and_mag_needs_published_ratios(a14b_dir, tmp_path, capsys):
    args = ["generate", PROMPT, "--ckpt-dir", str(a14b_dir), "--size", "64*64", "--frames", "5",
            "--steps", "8", "--device", "cpu", "--quiet", "--out", str(tmp_path / "c.mp4")]
    assert cli.main(args + ["--cache", "mag:1"]) == 0
    assert "cache: skipped" in capsys.readouterr().out
    assert cli.main(args + ["--cache", "sometimes"]) == 2
    assert "error: cache 'sometimes'" in capsys.readouterr().err
    assert cli.main(["generate", PROMPT, "--device", "cpu", "--quiet", "--cache", "mag",
                     "--out", str(tmp_path / "d.mp4")]) == 2  # the demo model has no ratios
    assert "use --cache easy" in capsys.readouterr().err
