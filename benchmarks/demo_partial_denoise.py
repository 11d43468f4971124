"""Where does the demo model lose the motion? Denoise held-out clips from their own noised latents.

For each start σ the ground-truth latent of a held-out translation clip is noised to σ
(x = (1-σ)x0 + σε) and denoised to σ=0 by the shipped experts (Euler on the preset's shifted
grid, the pipeline's CFG and expert schedule), then decoded and scored by
the pixel scorer. Start σ=1 is ordinary generation from noise; the smaller the start σ, the more
of the true layout the model is given. Usage: python benchmarks/demo_partial_denoise.py [--n 16]
"""

from __future__ import annotations

import argparse

import torch

from wanmoe.demo.clips import DIRECTIONS, held_out_scenes, render, to_tensor
from wanmoe.demo.evaluate import analyse, score, summarise
from wanmoe.models.experts import ExpertSchedule
from wanmoe.sampling.guidance import CFGDenoiser
from wanmoe.sampling.sigmas import flow_schedule


@torch.no_grad()
def partial_denoise(pipe, x0: torch.Tensor, prompt: str, start: float, seed: int) -> torch.Tensor:
    """Noise x0 [1, z, F, h, w] to σ=start and Euler-denoise it to σ=0 with the pipeline's CFG and
    expert schedule, on the preset's sigma grid below `start`."""
    p = pipe.preset
    timesteps, sigmas = flow_schedule(p.steps, p.shift)
    keep = sigmas[:-1] < start
    sig = torch.cat([torch.tensor([start]), sigmas[:-1][keep], sigmas[-1:]]).tolist()
    ts = [torch.tensor(int(start * 1000))] + list(timesteps[keep])
    schedule = ExpertSchedule.from_preset(p)
    denoiser = CFGDenoiser(pipe.experts, *pipe.encode(prompt, None))
    g = torch.Generator().manual_seed(seed)
    x = (1 - start) * x0 + start * torch.randn(x0.shape, generator=g)
    for t, a, b in zip(ts, sig[:-1], sig[1:]):
        x = x + (b - a) * denoiser(schedule.select(t), x, t)
    return x


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=16, help="held-out translation prompts")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--starts", default="1.0,0.95,0.9,0.8,0.6")
    args = ap.parse_args(argv)
    from wanmoe.pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint)
    scenes = [s for s in held_out_scenes(4 * args.n) if s.objects[0].motion in DIRECTIONS][:args.n]
    vae = pipe.vae
    x0 = [vae.encode(to_tensor(render(s))[None], chunked=False) for s in scenes]
    print("| start σ | colour | direction | motion | count |\n|---|---|---|---|---|")
    for start in (float(v) for v in args.starts.split(",")):
        hits = []
        for i, s in enumerate(scenes):
            frames = pipe.decode(partial_denoise(pipe, x0[i], s.caption, start, seed=i)[0]).numpy()
            hits.append(score(s, analyse(frames)))
        acc = summarise(hits)
        print(f"| {start} | " + " | ".join(f"{100 * acc[k]:.0f} %" for k in
                                           ("colour", "direction", "motion", "count")) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
