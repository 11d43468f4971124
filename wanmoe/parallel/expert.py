"""Expert parallel: each MoE expert on its own rank; several videos flow through them as a pipeline.

Rank r runs the steps of the r-th expert of the schedule (A14B: rank 0 high noise, rank 1 low
noise). For video k, rank 0 runs its high-noise steps and sends (x, solver) to rank 1, then
starts video k+1 at once while rank 1 runs video k's low-noise steps: with K videos the two
experts work at the same time for K-1 of the K+1 phases. The last rank sends the final latents
back to rank 0, which decodes and writes every video. With --cfg-parallel / --ulysses each
expert runs on a group of C x U ranks instead of one (rank (e, i) hands on to rank (e+1, i)). The solver (its multistep history
included) travels with the sample, so the steps are exactly the single-process steps: the final
latents are bit-identical to `pipe.generate` for the same prompt and seed.

Each rank loads only the expert it runs (`setup.experts_on_this_rank`): half the DiT weights
of a one-process run per rank.
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wanmoe.sampling import make_solver
from wanmoe.sampling.noise import initial_noise


@dataclass(frozen=True)
class Span:
    """One phase on the timeline: `rank` ran `expert`'s steps of video `video`."""

    rank: int
    expert: str
    video: int
    start: float  # seconds since the common start (a barrier)
    end: float

    def line(self) -> str:
        return (f"timeline: rank={self.rank} expert={self.expert} video={self.video} "
                f"start={self.start:.3f} end={self.end:.3f}")


def overlap_seconds(spans: list[Span]) -> float:
    """Total time two different ranks were both inside a phase (the pipelining gain)."""
    total = 0.0
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if a.rank != b.rank:
                total += max(0.0, min(a.end, b.end) - max(a.start, b.start))
    return total


def _isend_obj(obj, dst: int, device) -> list:
    """Pickle `obj` (tensors via torch.save) and post it to `dst`: a size, then the bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    return [(dist.isend(size, dst), size), (dist.isend(payload, dst), payload)]


def _recv_obj(src: int, device):
    size = torch.zeros(1, dtype=torch.long, device=device)
    dist.recv(size, src)
    payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.recv(payload, src)
    return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), weights_only=False)


def _wait(handles: list) -> None:
    for work, _tensor in handles:  # the tensor is kept alive until its send completed
        work.wait()


def _run_steps(x, solver, schedule, denoiser, steps: list[int]):
    """The loop of `sampling.loop.denoise` over a subset of the steps (in order)."""
    for i in steps:
        t = solver.timesteps[i]
        x = solver.step(denoiser(schedule.select(t), x, t), x)
    return x


def run_expert_parallel(pipe, jobs, negative_prompt=None) -> list[torch.Tensor] | None:
    """Generate every (prompt, GenerationRequest) of `jobs` over the expert groups.

    Group e (ranks e*G .. e*G+G-1, G = C x U: CFG parallel and Ulysses inside the group) runs
    the e-th expert's steps; rank (e, i) hands each video to rank (e+1, i). Returns the final
    latents [C, F, h, w] (CPU, float32) of every video on rank 0 and None elsewhere; on rank 0
    `pipe.timeline` holds every group's spans and `pipe.loaded_per_rank` each group's experts.
    """
    from wanmoe.pipeline import latent_shape

    from .setup import make_denoiser

    plan, dev = pipe.runtime.parallel, pipe.device
    rank, size, groups, e = plan.rank, plan.group_size, plan.num_experts, plan.expert_rank
    leader, last = rank % size == 0, e == groups - 1
    comm_dev = dev if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = [x.name for x in pipe.preset.experts][e]  # schedule order: high noise first
    for model in pipe.experts.values():
        model.set_compute_dtype(pipe.dtype)
    spans, handles, finals = [], [], []
    contexts = [pipe.encode(prompt, negative_prompt) for prompt, _ in jobs]  # before the clock
    dist.barrier()
    t0 = time.perf_counter()
    for k, ((cond, uncond), (_, st)) in enumerate(zip(contexts, jobs)):
        denoiser = make_denoiser(pipe.experts, cond, uncond, pipe.parallel_groups,
                                 pipe.runtime.batched_cfg)
        if e == 0:
            x = initial_noise(latent_shape(pipe.preset, st), st.seed, dev)
            solver = make_solver(st.solver, st.steps, st.shift)
        else:
            state = _recv_obj(rank - size, comm_dev)
            x, solver = state["x"].to(dev), state["solver"]
        steps = [i for i, t in enumerate(solver.timesteps) if st.schedule.select(t).expert == mine]
        start = time.perf_counter() - t0
        x = _run_steps(x, solver, st.schedule, denoiser, steps)
        spans.append(Span(rank, mine, k, start, time.perf_counter() - t0))
        if not last:
            handles += _isend_obj({"x": x.cpu(), "solver": solver}, rank + size, comm_dev)
        elif leader:
            handles += _isend_obj({"x": x.float().cpu()}, 0, comm_dev)
    if leader and e > 0:  # after the final latents on the same pair: received in this order
        handles += _isend_obj({"spans": spans, "loaded": sorted(pipe.experts)}, 0, comm_dev)
    if rank == 0:
        src = (groups - 1) * size
        finals = [_recv_obj(src, comm_dev)["x"] for _ in jobs]
        reports = [{"spans": spans, "loaded": sorted(pipe.experts)}]
        reports += [_recv_obj(g * size, comm_dev) for g in range(1, groups)]
        pipe.timeline = sorted((s for r in reports for s in r["spans"]), key=lambda s: (s.start, s.rank))
        pipe.loaded_per_rank = [r["loaded"] for r in reports]
    _wait(handles)
    return finals if rank == 0 else None


def numbered(path, k: int, many: bool):
    """OUT.mp4 -> OUT_003.mp4 for video 3 of several (the path itself for a single video)."""
    return path if path is None or not many else path.with_name(f"{path.stem}_{k:03d}{path.suffix}")


def generate_many(pipe, prompts, settings, negative_prompt=None, *, plan=None, out=None,
                  latents_path=None, tiling=None, progress=True) -> int:
    """`wanmoe generate --prompts FILE` (and --expert-parallel): video k has seed SEED + k; rank 0
    decodes and writes every video. Returns the exit status."""
    from dataclasses import replace

    from wanmoe.video import save_latents, write_mp4

    jobs = [(p, replace(settings, seed=(settings.seed + k) % 2**63)) for k, p in enumerate(prompts)]
    t0 = time.perf_counter()
    if plan is not None and plan.expert:
        finals = run_expert_parallel(pipe, jobs, negative_prompt)
        if finals is None:
            return 0
        for g, names in enumerate(pipe.loaded_per_rank):
            print(f"timeline: rank={g * plan.group_size} holds {','.join(names)}", file=sys.stderr)
        for span in pipe.timeline:
            print(span.line(), file=sys.stderr)
        print(f"timeline: overlap {overlap_seconds(pipe.timeline):.3f} s of "
              f"{time.perf_counter() - t0:.3f} s", file=sys.stderr)
    else:
        finals = [pipe.generate(p, negative_prompt, settings=st, progress=progress,
                                decode=False).latents for p, st in jobs]
        if plan is not None and not plan.is_main:
            return 0
    many = len(jobs) > 1
    for k, (latents, (_, st)) in enumerate(zip(finals, jobs)):
        frames = pipe.decode(latents, tiling)
        write_mp4(numbered(out, k, many), frames, pipe.preset.fps)
        if latents_path is not None:
            save_latents(numbered(latents_path, k, many), latents)
        print(f"wrote {numbered(out, k, many)} (seed {st.seed})")
    print(f"time: load {pipe.load_seconds:.2f} s | {len(jobs)} videos {time.perf_counter() - t0:.2f} s")
    return 0
