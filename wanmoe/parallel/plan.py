"""ParallelPlan: how one generation is spread over the processes of a torch.distributed job.

Built and validated once at the edge (`plan_from_env`, before any process group exists, so a
bad plan is an `InputError` on every rank and no rank blocks in a collective); stored in
`RuntimeConfig.parallel`; read by `wanmoe.parallel.setup` and the pipeline.

Rank layout (N = world size = E x C x U; E = expert count under expert parallel, else 1;
C = 2 with CFG parallel, else 1):

    rank = (e * C + c) * U + u    e: expert group, c: CFG branch (0 cond, 1 uncond), u: Ulysses rank

so in expert group e, ranks of branch 0 run the conditional pass sequence-parallel among
themselves, ranks of branch 1 the unconditional one, and rank u of one branch pairs with rank u
of the other to combine the two velocities; rank (e, c, u) hands a video on to (e+1, c, u).
FSDP shards the DiT blocks over all N ranks (not combined with expert parallel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wanmoe.errors import InputError


@dataclass(frozen=True)
class ParallelPlan:
    """Validated multi-process layout: world size, this rank, Ulysses degree, CFG / FSDP / expert."""

    world_size: int
    rank: int
    local_rank: int
    ulysses: int = 1  # U: sequence-parallel degree (divides the head count)
    cfg: bool = False  # conditional / unconditional passes on two rank groups
    fsdp: bool = False  # DiT blocks sharded with torch.distributed.fsdp.fully_shard
    expert: bool = False  # one rank group per MoE expert, videos pipelined through them
    num_experts: int = 1  # expert groups (the model's expert count under expert parallel)
    backend: str = "gloo"  # "nccl" on CUDA, "gloo" on the CPU

    @property
    def cfg_size(self) -> int:
        return 2 if self.cfg else 1

    @property
    def group_size(self) -> int:
        """Ranks that run one expert together (C x U)."""
        return self.cfg_size * self.ulysses

    @property
    def expert_rank(self) -> int:
        """Which expert group this rank belongs to (0: the first expert of the schedule)."""
        return self.rank // self.group_size if self.expert else 0

    @property
    def _base(self) -> int:
        return self.expert_rank * self.group_size

    @property
    def cfg_rank(self) -> int:
        """0: this rank runs the conditional pass, 1: the unconditional one."""
        return (self.rank - self._base) // self.ulysses

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def ulysses_ranks(self) -> list[int]:
        """Global ranks of this rank's sequence-parallel group."""
        start = self._base + self.cfg_rank * self.ulysses
        return list(range(start, start + self.ulysses))

    @property
    def cfg_ranks(self) -> list[int]:
        """Global ranks that hold the same token shard in each CFG branch (cond first)."""
        return [self._base + c * self.ulysses + self.ulysses_rank for c in range(self.cfg_size)]

    @property
    def is_main(self) -> bool:
        """Rank 0 writes outputs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def make_plan(world_size: int, rank: int, *, ulysses: int = 1, cfg: bool = False,
              fsdp: bool = False, expert: bool = False, num_heads: int | None = None,
              num_experts: int | None = None, local_rank: int | None = None,
              backend: str = "gloo") -> ParallelPlan:
    """Check a layout against the world size, head and expert count; the one validation."""
    if ulysses < 1:
        raise InputError(f"--ulysses {ulysses} must be >= 1")
    if num_heads is not None and num_heads % ulysses:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise InputError(f"--ulysses {ulysses} does not divide the model's {num_heads} attention "
                         f"heads; use one of {', '.join(map(str, divisors))}")
    groups = 1
    if expert:
        if fsdp:
            raise InputError("--expert-parallel does not combine with --fsdp (FSDP shards over "
                             "every rank, expert groups run different experts); drop one")
        if num_experts is not None and num_experts < 2:
            raise InputError("--expert-parallel needs a model with several experts (T2V-A14B); "
                             "this model has one")
        groups = num_experts or 2
    need = groups * ulysses * (2 if cfg else 1)
    if need != world_size and not (fsdp and need == 1):  # FSDP alone shards over any world
        parts = [f"--ulysses {ulysses}"] if ulysses > 1 else []
        parts += [f"{f} ({n})" for f, n, on in (("--cfg-parallel", 2, cfg),
                                                ("--expert-parallel", groups, expert)) if on]
        what = " x ".join(parts) or "a run without --ulysses / --cfg-parallel / --expert-parallel / --fsdp"
        raise InputError(f"{what} needs {need} processes but this job has "
                         f"{world_size}; launch with torchrun --nproc_per_node {need} (x nodes "
                         f"= {need} in all) or change the plan")
    if not 0 <= rank < world_size:
        raise InputError(f"RANK {rank} is outside the world of {world_size} processes")
    return ParallelPlan(world_size=world_size, rank=rank,
                        local_rank=rank if local_rank is None else local_rank,
                        ulysses=ulysses, cfg=cfg, fsdp=fsdp, expert=expert, num_experts=groups,
                        backend=backend)


def plan_from_env(*, ulysses: int = 1, cfg: bool = False, fsdp: bool = False,
                  expert: bool = False, num_heads: int | None = None,
                  num_experts: int | None = None, device_type: str = "cpu",
                  env=None) -> ParallelPlan | None:
    """The plan of a torchrun job from WORLD_SIZE / RANK / LOCAL_RANK; None for one process
    asked for nothing parallel."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world == 1 and ulysses == 1 and not cfg and not fsdp and not expert:
        return None
    if world == 1:
        flags = [f for f, on in (("--ulysses", ulysses > 1), ("--cfg-parallel", cfg),
                                 ("--fsdp", fsdp), ("--expert-parallel", expert)) if on]
        raise InputError(f"{' '.join(flags)} needs several processes; launch with "
                         f"torchrun --nproc_per_node N -m wanmoe generate ...")
    return make_plan(world, int(env.get("RANK", "0")), ulysses=ulysses, cfg=cfg, fsdp=fsdp,
                     expert=expert, num_heads=num_heads, num_experts=num_experts,
                     local_rank=int(env.get("LOCAL_RANK", "0")),
                     backend="nccl" if device_type == "cuda" else "gloo")


def env_rank(env=None) -> int:
    """This process's global rank from the launcher's environment (0 outside torchrun)."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0"))
