"""ParallelPlan: validation at the edge (no processes needed) and the rank layout."""

from __future__ import annotations

import pytest

from wanmoe.errors import InputError
from wanmoe.parallel.plan import make_plan, plan_from_env


def test_rank_layout_ulysses_x_cfg():
    plans = [make_plan(8, r, ulysses=4, cfg=True, num_heads=40) for r in range(8)]
    assert [p.cfg_rank for p in plans] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert plans[5].ulysses_rank == 1 and plans[5].ulysses_ranks == [4, 5, 6, 7]
    assert plans[5].cfg_ranks == [1, 5]  # same token shard, cond first
    assert plans[0].is_main and not plans[5].is_main


def test_ulysses_must_divide_heads():
    with pytest.raises(InputError, match=r"--ulysses 3 does not divide the model's 40 attention "
                                         r"heads; use one of 1, 2, 4, 5, 8, 10, 20, 40"):
        make_plan(3, 0, ulysses=3, num_heads=40)


def test_world_must_match_the_plan():
    with pytest.raises(InputError, match="needs 4 processes but this job has 8"):
        make_plan(8, 0, ulysses=2, cfg=True, num_heads=40)
    with pytest.raises(InputError, match="a run without --ulysses .* needs 1 processes but this job has 2"):
        make_plan(2, 0)  # two processes and nothing to split: a launch mistake
    assert make_plan(4, 3, fsdp=True).fsdp  # FSDP alone shards over any world


def test_expert_parallel_rules():
    assert make_plan(2, 1, expert=True, num_experts=2).expert
    with pytest.raises(InputError, match=r"--expert-parallel \(2\) needs 2 processes but this job has 4"):
        make_plan(4, 0, expert=True, num_experts=2)
    with pytest.raises(InputError, match="several experts"):
        make_plan(2, 0, expert=True, num_experts=1)
    with pytest.raises(InputError, match="does not combine with --fsdp"):
        make_plan(2, 0, expert=True, fsdp=True, num_experts=2)
    # expert groups of CFG x Ulysses: rank = (e * C + c) * U + u
    plans = [make_plan(8, r, expert=True, num_experts=2, cfg=True, ulysses=2, num_heads=40)
             for r in range(8)]
    assert [p.expert_rank for p in plans] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.cfg_rank for p in plans] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert plans[6].ulysses_ranks == [6, 7] and plans[6].cfg_ranks == [4, 6]


def test_plan_from_env():
    assert plan_from_env(env={}) is None  # one process, nothing asked
    with pytest.raises(InputError, match="--ulysses needs several processes; launch with torchrun"):
        plan_from_env(ulysses=2, num_heads=40, env={})
    p = plan_from_env(ulysses=2, num_heads=40, device_type="cuda",
                      env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (p.rank, p.local_rank, p.backend) == (1, 1, "nccl")
    assert plan_from_env(cfg=True, env={"WORLD_SIZE": "2", "RANK": "0"}).backend == "gloo"
