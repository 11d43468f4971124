"""Text -> latents -> video: the Wan2.2 text-to-video pipeline (spec §1, §3, §4.2).

The data path reads straight through: text encode (prompt and negative prompt in separate
calls) -> initial noise -> the request's expert schedule + solver -> CFG denoise loop -> VAE
decode -> uint8 frames. This module owns no device, memory or quantisation policy: what runs
where comes from a `RuntimeConfig` (built at the edge, `wanmoe.request.runtime_config`) and is
carried out by the policy objects of `wanmoe.runtime` (expert placement, text-encoder placement,
attention backends, the weight path), which the pipeline only calls.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configs import OFFICIAL_NEGATIVE_PROMPT, ModelPreset
from .errors import CheckpointError, InputError
from .request import GenerationRequest, RuntimeConfig, runtime_config
from .runtime.offload import Resident, choose_offload, placement_for, resolve_offload
from .runtime.text_placement import encoder_on, text_home
from .validate import settings_for

Settings = GenerationRequest  # the old name, kept for the Python API
DEMO_DIR = Path(__file__).resolve().parent / "demo" / "assets"


@dataclass
class GenerationResult:
    """Output of one generation: frames, final latents and how long each stage took."""

    frames: torch.Tensor  # uint8 [F, H, W, 3], CPU
    latents: torch.Tensor  # float32 [C, F_lat, H_lat, W_lat], CPU
    fps: int
    seed: int
    settings: GenerationRequest
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    peak_memory_bytes: int = 0
    expert_per_step: list[str] = field(default_factory=list)
    cache_stats: dict = field(default_factory=dict)  # {"forwards", "skipped"} with --cache


def default_negative_prompt(preset: ModelPreset) -> str:
    """The preset's own negative prompt when it has one, else the official Chinese default."""
    neg = getattr(preset, "negative_prompt", None)
    return OFFICIAL_NEGATIVE_PROMPT if neg is None else neg


def latent_shape(preset: ModelPreset, settings: GenerationRequest) -> list[int]:
    """[z, F_lat, H_lat, W_lat] (spec §1.3)."""
    st, sh, sw = preset.vae.stride
    return [preset.vae.z_dim, (settings.frames - 1) // st + 1,
            settings.height // sh, settings.width // sw]


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]: clamp, (x+1)/2, x255, truncate (spec §1.4)."""
    x = (video.float().clamp(-1, 1) + 1) / 2
    return (x * 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA max_memory_allocated, or the process's peak RSS on a CPU run."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource  # Unix only
    except ImportError:
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timed(timings: dict, name: str, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    yield
    _sync(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


class _StepBar:
    """tqdm bar per denoise step that shows the active expert and the model timestep."""

    def __init__(self, total: int, enabled: bool, on_step=None, done: int = 0,
                 experts: list[str] | None = None) -> None:
        self.bar = None
        self.experts: list[str] = list(experts or [])  # a resumed run starts with the saved ones
        self.on_step = on_step
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="denoise", unit="step", file=sys.stderr)

    def __call__(self, i, n, stage, t) -> None:
        self.experts.append(stage.expert)
        if self.on_step is not None:
            self.on_step(i + 1, n, stage.expert)  # may raise: that stops the run (cancel)
        if self.bar is not None:
            self.bar.set_postfix_str(f"expert={stage.expert} t={int(t)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class WanPipeline:
    """Loaded experts, text encoder and VAE, plus the runtime policies that place them."""

    def __init__(self, preset: ModelPreset, experts: dict, text_encoder, vae, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None,
                 runtime: RuntimeConfig | None = None, placement=None, source: str = "") -> None:
        if runtime is None:  # programmatic construction (tests, notebooks): plain defaults
            runtime = RuntimeConfig(device=torch.device(device or "cpu"), dtype=dtype or torch.float32)
        self.preset = preset
        self.experts = experts  # name -> WanDiT, names as in preset.experts
        self.text_encoder = text_encoder
        self.vae = vae
        self.runtime = runtime
        self.placement = placement or Resident()  # runtime.offload policy object
        self.source = source
        self.load_seconds = 0.0
        self.merged_loras = False  # True when LoRAs were merged into the weights at load
        self.cache_stats: dict = {}  # what the step cache skipped in the last sample()
        self.cache_log: list = []  # (step, expert, pass, skipped) per forward of that sample()
        self.parallel_groups = None  # wanmoe.parallel.setup.ParallelGroups when runtime.parallel
        self.cfg_batching = None  # runtime.cfg_batch.CFGBatchDecision of the last sample() (auto)
        self.lora_tag = ""  # the LoRAs in use, as text (part of a checkpoint's fingerprint)
        if runtime.compile:  # torch.compile per DiT block; compiles lazily at the first forward
            from .runtime.compile import compile_blocks

            for model in experts.values():
                compile_blocks(model)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runtime.dtype

    @property
    def offload(self) -> bool:
        return self.placement.offloads

    def set_loras(self, high=(), low=(), both=()) -> None:
        """Replace the LoRAs of the experts without reloading the base weights.

        Each list holds (file, strength) pairs or 'FILE[:STRENGTH]' strings; `both` goes on every
        expert. Side branches on the weight path (runtime LoRA); a pipeline loaded with merged
        LoRAs cannot drop them, so this is refused there.
        """
        from .lora.apply import apply_loras, parse_loras
        from .request import lora_plan
        from .runtime.config import LoRAMode
        from .runtime.weights import clear_patches

        if getattr(self, "merged_loras", False):
            raise InputError("this pipeline was loaded with LoRAs merged into its weights; load it "
                             "with lora_mode='runtime' (CLI --lora-mode runtime) to change LoRAs")
        plan = lora_plan(self.preset, both, high, low)
        parsed = {name: parse_loras(self.preset.dit, specs) for name, specs in plan.items()}
        self.lora_tag = lora_tag(plan)
        for name, model in self.experts.items():
            clear_patches(model)
            if parsed.get(name):
                apply_loras(model, parsed[name], LoRAMode.RUNTIME)

    # ---- stages ----------------------------------------------------------------------------
    def settings(self, **kwargs) -> GenerationRequest:
        """Validate user values against this model (no computation)."""
        return settings_for(self.preset, **kwargs)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str | None) -> tuple[list, list]:
        """Two separate batch-1 encoder calls (spec §5.1); contexts land on the DiT device."""
        neg = default_negative_prompt(self.preset) if negative_prompt is None else negative_prompt
        with encoder_on(self.text_encoder.model, self.runtime.encoder_device):  # on the CPU if VRAM is short
            cond = self.text_encoder.encode([prompt])
            uncond = self.text_encoder.encode([neg])
        return [c.to(self.device) for c in cond], [u.to(self.device) for u in uncond]

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: list, uncond: list | None,
               settings: GenerationRequest, *, batched_cfg: bool | None = None,
               progress: bool = True, cache=None, on_step=None,
               checkpointing=None) -> tuple[torch.Tensor, list[str]]:
        """Denoise `noise` [C, F, H, W] -> final latents, plus the expert used at every step.

        `cache`: a `runtime.cache.CacheSpec` or its text ('mag:0.06'); None = the runtime's.
        What it skipped is left in `self.cache_stats`. `on_step(done, total, expert)` runs after
        each step. `checkpointing`: a `sampling.checkpoint.Checkpointing` (save every K steps,
        resume from a file).
        """
        from .runtime.cache import StepCache, parse_cache
        from .sampling import make_solver
        from .sampling.guidance import CFGDenoiser, PhasedGuidance
        from .sampling.loop import denoise

        schedule = settings.schedule if settings.preset is not None else \
            _schedule_for(self.preset, settings)
        solver = make_solver(settings.solver, settings.steps, settings.shift)
        start, x, done_experts = 0, noise, []
        if checkpointing is not None and checkpointing.resume is not None:
            start, x, done_experts = checkpointing.load(solver, tuple(noise.shape))
            solver.to(noise.device)
            x = x.to(noise.device)
        for model in self.experts.values():
            model.set_compute_dtype(self.dtype)
        self.placement.activate(schedule.select(solver.timesteps[start]).expert)
        batched = self.runtime.batched_cfg if batched_cfg is None else bool(batched_cfg)
        if batched is None:  # unset: batch when the memory model says B=2 fits (runtime.cfg_batch)
            self.cfg_batching = self._decide_batched_cfg(uncond, schedule, settings)
            batched = self.cfg_batching.batched
        if self.parallel_groups is not None:  # CFG parallel when the plan says so
            from .parallel.setup import make_denoiser

            denoiser = make_denoiser(self.experts, cond, uncond, self.parallel_groups, batched)
        else:
            denoiser = CFGDenoiser(self.experts, cond, uncond, batched=batched)
        self.last_denoiser = denoiser  # its `calls` count the DiT forwards of this sample()
        if getattr(settings, "cfg_steps", None) is not None:  # phased guidance (--cfg-steps)
            denoiser = PhasedGuidance(denoiser, settings.cfg_steps, start)
        spec = parse_cache(cache) if cache is not None else self.runtime.cache
        step_cache = None
        if spec is not None and spec.enabled:
            step_cache = StepCache(spec, self.experts, schedule, solver.timesteps, self.preset.name)
            denoiser = step_cache.wrap(denoiser)
        bar = _StepBar(settings.steps, progress, on_step, start, done_experts)
        after_step = None
        if checkpointing is not None and checkpointing.every > 0:
            def after_step(done, x_now):
                checkpointing.maybe_save(done, settings.steps, x_now, solver,
                                         bar.experts + [schedule.select(solver.timesteps[done - 1]).expert])
        self.cache_stats = {}
        text_kv = self._text_kv_cache(settings, batched)

        def on_stage_change(prev, new):
            if text_kv is not None:  # only the active expert's K/V stay (memory)
                text_kv.clear()
            self.placement.activate(new.expert)
        try:
            x = denoise(x, solver, schedule, denoiser, progress=bar, start=start,
                        after_step=after_step, on_stage_change=on_stage_change)
        finally:
            if text_kv is not None:
                text_kv.remove()
            bar.close()
            self.placement.release()
            if step_cache is not None:
                self.cache_stats = step_cache.remove()
                self.cache_log = step_cache.log
        return x, bar.experts

    def _text_kv_cache(self, settings, batched: bool):
        """The per-run text K/V cache of this sample() (runtime.text_kv), or None when off."""
        from .runtime.text_kv import TextKVCache, decide_text_kv_cache, text_kv_bytes

        need, free = 0, None
        mode = getattr(self.runtime, "text_kv_cache", "auto")
        if mode == "auto" and self.device.type == "cuda":
            from .runtime.cfg_batch import free_device_bytes
            from .runtime.memory import dit_activation_bytes, tokens_for

            tokens = tokens_for(self.preset, settings.width, settings.height, settings.frames)
            need = text_kv_bytes(self.preset.dit, 2, self.dtype) + dit_activation_bytes(
                self.preset, tokens, 2 if batched else 1, self.dtype, self.runtime.per_token_time)
            free = free_device_bytes(self.device)
        on = decide_text_kv_cache(mode, self.device, self.runtime.compile, need, free)
        self.text_kv_on = on
        return TextKVCache(self.experts) if on else None

    def _decide_batched_cfg(self, uncond, schedule, settings):
        from .runtime.cfg_batch import decide_batched_cfg, free_device_bytes
        from .runtime.memory import tokens_for, weight_format

        has_uncond = uncond is not None and getattr(settings, "cfg_steps", None) != 0 and \
            any(stage.guidance != 1.0 for stage in schedule.stages)
        decision = decide_batched_cfg(
            self.preset, tokens_for(self.preset, settings.width, settings.height, settings.frames),
            self.dtype, self.device.type, free_device_bytes(self.device),
            weight_format(self.runtime), self.runtime.per_token_time, has_uncond)
        if self.device.type == "cuda":
            print(f"cfg batching: {decision.reason}", file=sys.stderr)
        return decision

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiling=None) -> torch.Tensor:
        """[C, F, h, w] -> uint8 [T, H, W, 3]; `tiling`: an optional `vae.tiling.TileSpec`.

        On CUDA without `tiling`, the decode is tiled when the memory model says the untiled one
        does not fit the free device memory (`runtime.memory.auto_vae_tile`)."""
        if tiling is None and self.device.type == "cuda":
            from .runtime.offload import auto_decode_tiling

            tiling = auto_decode_tiling(self.preset, latents.shape, self.device)
        video = self.vae.decode(latents[None].to(self.device, torch.float32),
                                tiling=tiling)  # [1, 3, T, H, W]
        return frames_to_uint8(video[0])

    def _checkpointing(self, prompt, negative_prompt, settings, cache, path, every, resume):
        """A `Checkpointing` for this request, or None; refuses what cannot resume exactly."""
        from .runtime.cache import parse_cache
        from .sampling.checkpoint import Checkpointing, request_fingerprint

        if not every and resume is None:
            return None
        spec = parse_cache(cache) if cache is not None else self.runtime.cache
        if spec is not None and spec.enabled:
            raise InputError("checkpoints and resume cannot be combined with a step cache (its "
                             "state is not saved); use --cache off with --checkpoint-every/--resume")
        if self.parallel_groups is not None:
            raise InputError("checkpoints and resume are not supported in multi-process runs yet")
        cp = Checkpointing(path=path, every=every, resume=resume, seed=settings.seed)
        neg = default_negative_prompt(self.preset) if negative_prompt is None else negative_prompt
        cp.fingerprint = request_fingerprint(
            model=self.preset.name, source=self.source, prompt=prompt, negative_prompt=neg,
            settings=repr(settings), dtype=self.dtype, loras=self.lora_tag,
            per_token_time=getattr(self.runtime, "per_token_time", None))
        return cp

    # ---- the whole run ---------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str | None = None, size=None, frames=None,
                 steps=None, shift=None, guide_scale=None, boundary=None, solver="unipc",
                 seed=-1, batched_cfg=None, progress=True, *, boundary_snr=None,
                 settings: GenerationRequest | None = None, vae_tiling=None,
                 cache=None, decode: bool = True, on_step=None, checkpoint=None,
                 checkpoint_every: int = 0, resume=None, cfg_steps=None) -> GenerationResult:
        """Text -> video. Unset values are the preset's official defaults (spec §1.2).

        decode=False skips the VAE (frames is then an empty tensor): the non-zero ranks of a
        multi-process run, which write nothing. `on_step(done, total, expert)` is called after
        each denoise step; an exception raised in it stops the run (cancellation).
        `checkpoint=PATH, checkpoint_every=K` saves the latents and solver state every K steps;
        `resume=PATH` continues such a file of the same request and ends with exactly the
        latents of an uninterrupted run (docs/serve.md)."""
        from .errors import InputError
        from .sampling.noise import initial_noise

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt is empty; describe the video to generate")
        from .preflight import check_prompts

        check_prompts(prompt, negative_prompt, self.preset.t5.text_len)
        if settings is None:
            settings = self.settings(size=size, frames=frames, steps=steps, shift=shift,
                                     guide_scale=guide_scale, boundary=boundary,
                                     boundary_snr=boundary_snr, solver=solver, seed=seed,
                                     cfg_steps=cfg_steps)
        elif cfg_steps is not None:  # a prepared request, phased here
            from dataclasses import replace

            from .validate import check_cfg_steps

            settings = replace(settings, cfg_steps=check_cfg_steps(cfg_steps))
        from .preflight import check_memory

        check_memory(self.preset, settings.width, settings.height, settings.frames, self.device,
                     self.dtype, bool(batched_cfg))
        checkpointing = self._checkpointing(prompt, negative_prompt, settings, cache, checkpoint,
                                            checkpoint_every, resume)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = {}
        with _timed(timings, "text_encode", self.device):
            cond, uncond = self.encode(prompt, negative_prompt)
        with _timed(timings, "denoise", self.device):
            noise = initial_noise(latent_shape(self.preset, settings), settings.seed, self.device)
            latents, used = self.sample(noise, cond, uncond, settings, batched_cfg=batched_cfg,
                                        progress=progress, cache=cache, on_step=on_step,
                                        checkpointing=checkpointing)
        with _timed(timings, "vae_decode", self.device):
            video = self.decode(latents, vae_tiling) if decode else \
                torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        timings["total"] = sum(timings.values())
        return GenerationResult(frames=video, latents=latents.float().cpu(), fps=self.preset.fps,
                                seed=settings.seed, settings=settings, timings=timings,
                                peak_memory_bytes=peak_memory(self.device), expert_per_step=used,
                                cache_stats=dict(self.cache_stats))


# ---- loading ---------------------------------------------------------------------------------

def lora_tag(plan: dict) -> str:
    """The LoRA plan {expert: [(file, strength), ...]} as stable text (checkpoint fingerprints)."""
    return ";".join(f"{name}=" + ",".join(f"{Path(str(f)).resolve()}:{float(s)!r}" for f, s in specs)
                    for name, specs in sorted(plan.items()) if specs)


def default_checkpoint() -> Path:
    """The built-in demo model folder, or a clear error when it is not installed."""
    if (DEMO_DIR / "wanmoe.json").is_file():
        return DEMO_DIR
    raise CheckpointError(f"no checkpoint given and the built-in demo model is not installed "
                          f"({DEMO_DIR / 'wanmoe.json'} is missing); pass --ckpt-dir <folder> "
                          f"(e.g. Wan2.2-T2V-A14B) or --high/--low/--vae/--text-encoder/--tokenizer")


def resolve(path=None, *, high=None, low=None, vae=None, text_encoder=None, tokenizer=None):
    """Checkpoint spec (preset + files) from headers and config files only: no weights read."""
    from .loading.checkpoint import resolve_checkpoint

    if path is None and high is None and low is None:
        path = default_checkpoint()
    from .preflight import check_distinct_experts

    spec = resolve_checkpoint(path, high=high, low=low, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)
    check_distinct_experts(spec.experts)
    return spec


def _schedule_for(preset: ModelPreset, settings: GenerationRequest):
    """The schedule of a request built without its preset (old-style Settings objects)."""
    from .models.experts import ExpertSchedule

    return ExpertSchedule.from_preset(preset, boundary=settings.boundary, guidance=settings.guide_scale)


def _load_expert(spec, name: str, rt: RuntimeConfig, device: torch.device, workspace=None,
                 loras=()):
    """One DiT expert on `device`, its weights prepared as `rt.weights` says (runtime.weights).

    `workspace`: dequantisation buffers shared by the GGUF layers of all experts (they run one
    layer at a time, so one buffer per weight shape suffices).
    """
    from .loading.components import load_dit
    from .runtime.attention import set_attention
    from .loading import open_component
    from .lora.apply import apply_loras
    from .runtime.config import LoRAMode, WeightMode
    from .runtime.quant.apply import make_installer, quantize_model, set_fp8_matmul

    source, key_map = spec.experts[name], None
    if rt.weights is WeightMode.KEEP:  # scaled-fp8 files stay fp8 (FP8Linear); GGUF stays anyway
        source, key_map = open_component(source, "dit", keep_quantized=True)
    install, on_read, quantiser = make_installer(workspace, device=device), None, None
    if rt.weights.quantises:  # fp8 / int8: each block linear quantised as it is read (quant.on_load)
        from .loading.on_read import ConvertOnRead
        from .runtime.quant.on_load import OnLoadQuantiser

        merged = loras if rt.lora_mode is LoRAMode.MERGE else ()  # into the float weight, then quantised
        quantiser = OnLoadQuantiser(rt.weights.value, spec.preset.dit, rt.dtype, device, merged, install)
        install = quantiser.install
        on_read = lambda src, km: ConvertOnRead(src, km, quantiser.plan, quantiser.convert)  # noqa: E731
    try:
        model = load_dit(source, spec.preset.dit, compute_dtype=rt.dtype, device=device,
                         key_map=key_map, install_quantized=install, on_read=on_read)
    finally:
        if source is not spec.experts[name]:
            source.close()
    if quantiser is not None:
        model = quantiser.finish(model)  # the rest of the merged LoRAs; GGUF-stored linears converted
    else:
        if loras and rt.lora_mode is LoRAMode.MERGE:  # into the float weights, before any conversion
            apply_loras(model, loras, rt.lora_mode)
        if rt.weights.converts:
            model = quantize_model(model, rt.weights.value)
    if loras and rt.lora_mode is LoRAMode.RUNTIME:
        apply_loras(model, loras, rt.lora_mode)
    set_attention(model, rt.attention)
    set_fp8_matmul(model, getattr(rt, "fp8_matmul", "dequant"))
    return model.set_compute_dtype(rt.dtype).set_per_token_time(rt.per_token_time).eval()


def load_pipeline(path=None, device=None, dtype=None, *, high=None, low=None, vae=None,
                  text_encoder=None, tokenizer=None, weights=None, offload=None,
                  text_encoder_device=None, spec=None, per_token_time: bool = False,
                  runtime: RuntimeConfig | None = None, loras=None, text_weights=None) -> WanPipeline:
    """Load a pipeline from a checkpoint folder (None: the built-in demo model).

    `runtime`: a `RuntimeConfig` from `wanmoe.request.runtime_config`; without one it is built
    here from device, dtype, weights, offload, text_encoder_device and per_token_time:
    weights None = the storage dtypes `dtype` needs (bf16 matmul weights under bf16, fp32
    under fp32; quantised files such as GGUF stay quantised); "keep" = as stored; "bf16" = block
    linears stored in bf16 even for fp32 compute (like the official --convert_model_dtype);
    "fp8"/"int8" = block linears quantised tensor by tensor while loading (runtime.quant.on_load).
    `text_weights` None / "fp8" / "int8": the umT5 linears as stored or quantised while loading.
    `loras`: {expert name: [(file, strength), ...]} (`wanmoe.request.lora_plan`); the files are
    read and matched against the model before any weight loads.
    """
    from .loading import components as C
    from .lora.apply import parse_loras
    from .runtime.quant.linear import DequantWorkspace
    from .text.encoder import TextEncoder
    from .text.tokenizer import load_tokenizer

    rt = runtime or runtime_config(device, dtype, weights=weights, offload=offload,
                                   text_device=text_encoder_device, per_token_time=per_token_time,
                                   text_weights=text_weights)
    t0 = time.perf_counter()
    if spec is None:
        spec = resolve(path, high=high, low=low, vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer)
    preset = spec.preset
    parsed = {name: parse_loras(preset.dit, specs) for name, specs in (loras or {}).items()}
    off, blocks = resolve_offload(rt, preset, spec.experts.values())
    home = torch.device("cpu") if off else rt.device  # where weights wait between their steps
    workspace = DequantWorkspace()
    tok = load_tokenizer(spec.tokenizer, text_len=preset.t5.text_len)  # a bad one fails before the weights
    names = [e.name for e in preset.experts]
    if rt.parallel is not None:  # expert parallel: each rank loads the expert it runs
        from .parallel.setup import experts_on_this_rank

        names = experts_on_this_rank(rt.parallel, names)
    experts = {name: _load_expert(spec, name, rt, home, workspace, parsed.get(name, ()))
               for name in names}
    t5_home = torch.device("cpu") if off else rt.encoder_device
    if t5_home.type == "cuda":  # the CPU when the GPU has no room left for it (runtime/text_placement.py)
        t5_home = text_home(t5_home, C.text_encoder_bytes(spec.text_encoder, rt.dtype, rt.text_weights))
    t5 = C.load_text_encoder(spec.text_encoder, dtype=rt.dtype, device=t5_home, weights=rt.text_weights)
    text = TextEncoder(tok, t5)
    vae_model = C.load_vae(spec.vae, cfg=preset.vae, device=rt.device)
    pipe = WanPipeline(preset, experts, text, vae_model, runtime=rt,
                       placement=placement_for(off, experts, rt.device, blocks),
                       source=str(spec.root or path or ""))
    if rt.parallel is not None:  # multi-process plan: rank groups, then hooks on every expert
        from .parallel.setup import ParallelGroups, apply_plan

        pipe.parallel_groups = ParallelGroups.build(rt.parallel)
        apply_plan(experts, rt.parallel, pipe.parallel_groups)
    pipe.load_seconds = time.perf_counter() - t0
    pipe.merged_loras = bool(parsed) and rt.lora_mode.value == "merge"  # cannot be undone
    pipe.lora_tag = lora_tag(loras or {})
    return pipe


def describe_memory(n: int) -> str:
    """Human-readable bytes (GiB/MiB)."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{max(n, 0)} B"


__all__ = ["GenerationResult", "WanPipeline", "load_pipeline", "frames_to_uint8", "latent_shape",
           "default_negative_prompt", "choose_offload", "describe_memory", "Settings"]
