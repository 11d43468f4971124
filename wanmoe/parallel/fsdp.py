"""FSDP2: each DiT block sharded over all ranks with `torch.distributed.fsdp.fully_shard`.

Every rank keeps 1/N of each block's parameters; a block's full parameters are all-gathered just
before it runs and freed right after (`reshard_after_forward=True`), so the resident expert
weights drop to ~1/N plus one block. The rest of the DiT (embeddings, time MLPs, head: ~1% of
A14B) stays replicated. Numerics are unchanged: the gathered parameters are the loaded ones
(no mixed-precision policy: the storage dtypes chosen by the loader are kept). Works with gloo
on the CPU as well as NCCL (checked on torch 2.13). Float weights only: quantised linears keep
their weights in buffers, which FSDP does not shard.
"""

from __future__ import annotations

from .plan import ParallelPlan


def shard_blocks(model, plan: ParallelPlan):
    """fully_shard every repeated block of `model` over the whole world; returns the mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = "cuda" if plan.backend == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (plan.world_size,))
    for block in getattr(model, model.meta.repeated):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    return mesh
