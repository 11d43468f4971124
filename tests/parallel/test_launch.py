"""Launch behaviour: a bad plan is one error line and exit 2 on every rank; FSDP really shards;
expert parallel over 3 prompts equals the one-process runs and its timeline overlaps."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers_parallel import (COMMON, ODD, REPO, child_env, load_latents, run_cli, torchrun)


@pytest.mark.slow
def test_bad_plan_is_one_error_line_and_exit_2_everywhere(tiny_a14b, tmp_path):
    r = torchrun(2, ["generate", "a red ball rolls", "--ckpt-dir", str(tiny_a14b), *ODD, *COMMON,
                     "--ulysses", "2", "--cfg-parallel", "--out", str(tmp_path / "x.mp4")])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --ulysses 2 x --cfg-parallel (2) needs 4 processes but this job "
                      "has 2; launch with torchrun --nproc_per_node 4 (x nodes = 4 in all) or "
                      "change the plan"]
    # torchrun's summary: the first rank to fail exited 2; the agent may SIGTERM the other one
    codes = re.findall(r"rank\s*: \d \(local_rank: \d\)\s*\n\s*exitcode\s*: (-?\d+)", r.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, r.stderr[-2000:]
    assert not (tmp_path / "x.mp4").exists()


def test_bad_plan_every_rank_exits_2_on_its_own(tiny_a14b, tmp_path):
    """The ranks as plain processes (no agent to kill the slower one): each exits 2 before any
    rendezvous, and only rank 0 prints."""
    procs = []
    for rank in (0, 1):
        env = {**child_env(), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}  # never contacted
        cmd = [sys.executable, "-m", "wanmoe", "generate", "a red ball", "--ckpt-dir",
               str(tiny_a14b), "--ulysses", "4", "--out", str(tmp_path / "x.mp4")]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert outs[0][1].strip() == ("error: --ulysses 4 does not divide the model's 2 attention "
                                  "heads; use one of 1, 2")
    assert outs[1][1].strip() == "" and outs[1][0].strip() == ""


@pytest.mark.slow
def test_fsdp_shards_every_block_over_the_ranks(tiny_a14b):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "parallel" / "fsdp_worker.py"), str(tiny_a14b)]
    r = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [tuple(map(int, m)) for m in re.findall(r"shards rank=(\d) local=(\d+) full=(\d+)", r.stdout)]
    assert sorted(x[0] for x in rows) == [0, 1]
    full = rows[0][2]
    assert sum(x[1] for x in rows) == full  # the shards partition the block parameters
    assert max(x[1] for x in rows) < 0.55 * full  # each rank holds about half


@pytest.mark.slow
def test_expert_parallel_three_prompts(tiny_a14b, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball rolls\na yellow square moves up\na green circle bounces\n")
    base = ["generate", "--prompts", str(prompts), "--ckpt-dir", str(tiny_a14b), *ODD, *COMMON]
    assert run_cli([*base, "--out", str(tmp_path / "one.mp4"),
                    "--save-latents", str(tmp_path / "one.safetensors")]) == 0
    r = torchrun(2, [*base, "--expert-parallel", "--out", str(tmp_path / "ep.mp4"),
                     "--save-latents", str(tmp_path / "ep.safetensors")])
    assert r.returncode == 0, r.stderr[-3000:]
    for k in range(3):  # same steps, solver history shipped with the sample: bit-identical
        got = load_latents(tmp_path / f"ep_{k:03d}.safetensors")
        assert bool((got == load_latents(tmp_path / f"one_{k:03d}.safetensors")).all())
    spans = {(int(rk), exp, int(v)): (float(a), float(b)) for rk, exp, v, a, b in re.findall(
        r"timeline: rank=(\d) expert=(\w+) video=(\d) start=([\d.]+) end=([\d.]+)", r.stderr)}
    assert len(spans) == 6 and {k[:2] for k in spans} == {(0, "high_noise"), (1, "low_noise")}
    # video k's low-noise phase starts before video k+1's high-noise phase ends: the overlap
    for k in range(2):
        low_k, high_next = spans[(1, "low_noise", k)], spans[(0, "high_noise", k + 1)]
        assert low_k[0] < high_next[1] and high_next[0] < low_k[1]
    assert float(re.search(r"timeline: overlap ([\d.]+) s", r.stderr).group(1)) > 0
    # each rank loaded only the expert it runs
    assert re.findall(r"timeline: rank=(\d) holds (\S+)", r.stderr) == [("0", "high_noise"),
                                                                       ("1", "low_noise")]
