"""torchrun worker: load the tiny A14B with --fsdp through the Python API, report the shards.

Prints one line `shards rank=R local=N full=M` (block parameter elements of the high-noise
expert held by this rank / in the whole expert)."""

import sys

from wanmoe import pipeline as P
from wanmoe.parallel.launch import parallel_runtime
from wanmoe.request import runtime_config

spec = P.resolve(sys.argv[1])
rt, plan = parallel_runtime(runtime_config("cpu", "fp32"), spec.preset.dit.num_heads,
                            len(spec.preset.experts), fsdp=True)
pipe = P.load_pipeline(spec=spec, runtime=rt)
params = list(pipe.experts["high_noise"].blocks.parameters())
local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
full = sum(p.numel() for p in params)  # a DTensor reports its global size
print(f"shards rank={plan.rank} local={local} full={full}")
