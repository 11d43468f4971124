"""The edge of a multi-process run: flags + torchrun environment -> validated plan -> process group.

    torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m wanmoe generate \\
        ... [--ulysses U] [--cfg-parallel] [--fsdp]

`parallel_runtime` validates the plan on every rank before any collective (a bad plan is the
same `InputError` everywhere: rank 0 prints it, every rank exits 2), then initialises the
process group and returns the RuntimeConfig with the plan in `parallel` and this rank's device.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wanmoe.runtime.config import OffloadMode, RuntimeConfig

from .plan import ParallelPlan, plan_from_env
from .setup import init_distributed


def add_cli_flags(group) -> None:
    """The `generate` flags of the parallel schemes (an argparse group)."""
    group.add_argument("--ulysses", type=int, default=1, metavar="U",
                       help="Ulysses sequence parallel over U processes (U divides the head "
                            "count; 40 for A14B); launch with torchrun")
    group.add_argument("--cfg-parallel", action="store_true",
                       help="conditional and unconditional passes on two process groups "
                            "(N = 2 x U processes)")
    group.add_argument("--fsdp", action="store_true",
                       help="shard every DiT block over all processes (FSDP2 fully_shard)")
    group.add_argument("--expert-parallel", action="store_true",
                       help="one process group per MoE expert (x --cfg-parallel x --ulysses "
                            "inside each); with --prompts the videos are pipelined (video k's "
                            "low-noise steps while video k+1's high-noise steps run)")


def parallel_runtime(rt: RuntimeConfig, num_heads: int, num_experts: int = 1, *,
                     ulysses: int = 1, cfg: bool = False, fsdp: bool = False,
                     expert: bool = False, env=None) -> tuple[RuntimeConfig, ParallelPlan | None]:
    """Validate the plan for this job, start the process group; (rt with the plan, plan)."""
    plan = plan_from_env(ulysses=ulysses, cfg=cfg, fsdp=fsdp, expert=expert, num_heads=num_heads,
                         num_experts=num_experts, device_type=rt.device.type, env=env)
    if plan is None:
        return rt, None
    device = torch.device("cuda", plan.local_rank) if rt.device.type == "cuda" else rt.device
    text_device = rt.text_device
    if text_device is not None and text_device.type == "cuda":
        text_device = device
    # Every rank keeps its experts resident, as the official multi-GPU runs do (spec §1.4).
    offload = OffloadMode.NONE if rt.offload is OffloadMode.AUTO else rt.offload
    init_distributed(plan)
    return replace(rt, device=device, text_device=text_device, offload=offload, parallel=plan), plan
