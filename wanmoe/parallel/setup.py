"""Process group, rank groups and the installation of a `ParallelPlan` on loaded experts.

Order on every rank (collectives must be entered in the same order everywhere):
`init_distributed(plan)` at the edge -> `ParallelGroups.build(plan)` in `load_pipeline` ->
`apply_plan(experts, plan, groups)` -> generation -> `shutdown()`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .plan import ParallelPlan


def init_distributed(plan: ParallelPlan, timeout_s: float = 1800.0) -> None:
    """`init_process_group` from torchrun's environment (env:// rendezvous, multi-node too);
    NCCL on CUDA (this rank's GPU = LOCAL_RANK), gloo on the CPU. No-op when already set up."""
    if dist.is_initialized():
        return
    if plan.backend == "nccl":
        torch.cuda.set_device(plan.local_rank)
    dist.init_process_group(plan.backend, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shared_seed(seed: int, plan: ParallelPlan, device: torch.device) -> int:
    """Rank 0's seed on every rank: -1 (random) is drawn on rank 0 and broadcast (spec §1.4)."""
    if seed != -1:
        return seed
    value = torch.tensor([random.randint(0, 2**63 - 1) if plan.is_main else 0], dtype=torch.long,
                         device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


@dataclass
class ParallelGroups:
    """The process groups of a plan: this rank's Ulysses group and its CFG pair."""

    plan: ParallelPlan
    ulysses: object | None  # a ProcessGroup, None when U == 1
    cfg: object | None  # a ProcessGroup of 2, None without CFG parallel

    @staticmethod
    def build(plan: ParallelPlan) -> "ParallelGroups":
        """Create the groups (every rank creates every group, in the same order)."""
        init_distributed(plan)
        uly = cfg = None
        u_size, groups = plan.ulysses, plan.num_experts if plan.expert else 1
        for e in range(groups):
            base = e * plan.group_size
            for c in range(plan.cfg_size if u_size > 1 else 0):
                ranks = list(range(base + c * u_size, base + (c + 1) * u_size))
                g = dist.new_group(ranks)
                uly = g if plan.rank in ranks else uly
            for u in range(u_size if plan.cfg else 0):
                ranks = [base + u, base + u_size + u]
                g = dist.new_group(ranks)
                cfg = g if plan.rank in ranks else cfg
        return ParallelGroups(plan, uly, cfg)


def apply_plan(experts: dict, plan: ParallelPlan, groups: ParallelGroups) -> None:
    """Install the plan's schemes on every expert: FSDP sharding first (it owns the parameters),
    then Ulysses (hooks on the runner and the self-attentions)."""
    for model in experts.values():
        if plan.fsdp:
            from .fsdp import shard_blocks

            shard_blocks(model, plan)
        if plan.ulysses > 1:
            from .ulysses import install_ulysses

            install_ulysses(model, plan.ulysses, plan.ulysses_rank, groups.ulysses)


def experts_on_this_rank(plan: ParallelPlan, names: list[str]) -> list[str]:
    """The experts this rank loads: all of them, or under expert parallel the one of its expert
    group, in schedule order (high noise on group 0)."""
    return [names[plan.expert_rank]] if plan.expert else list(names)


def make_denoiser(experts, cond, uncond, groups: ParallelGroups | None, batched: bool):
    """The pipeline's denoiser: CFG parallel when the plan says so, else the plain one."""
    if groups is not None and groups.plan.cfg:
        from .cfg import CFGParallelDenoiser

        return CFGParallelDenoiser(experts, cond, uncond, branch=groups.plan.cfg_rank,
                                   group=groups.cfg)
    from wanmoe.sampling.guidance import CFGDenoiser

    return CFGDenoiser(experts, cond, uncond, batched=batched)
