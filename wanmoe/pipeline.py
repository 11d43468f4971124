"""Text -> latents -> video: the Wan2.2 text-to-video pipeline (spec §1, §3, §4.2).

The data path reads straight through: validate -> text encode (prompt and negative prompt in
separate calls) -> initial noise -> expert schedule + solver -> CFG denoise loop -> VAE decode ->
uint8 frames. Device placement is the only policy here, and a simple one:

* dtype: bf16 on CUDA (the official mixed precision, spec §2.8), fp32 on CPU (bf16 matmuls are
  slow on most CPUs; pass dtype="bf16" on a CPU to reproduce the official GPU numbers).
* offload=None: on CUDA, keep every expert resident when the DiT weights of all experts take at
  most half of the GPU's memory, otherwise keep only the active expert on the GPU and move the
  other one to the CPU at the stage change (the official single-GPU behaviour, spec §3). On a CPU
  there is nothing to offload to.
* quantisation is asked for by name (`weights`) and done by `wanmoe.runtime.quant`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configs import OFFICIAL_NEGATIVE_PROMPT, ModelPreset
from .errors import CheckpointError
from .validate import Settings, parse_device, parse_dtype, settings_for

DEMO_DIR = Path(__file__).resolve().parent / "demo" / "assets"
OFFLOAD_FRACTION = 0.5  # auto-offload when all experts' weights exceed this share of GPU memory


@dataclass
class GenerationResult:
    """Output of one generation: frames, final latents and how long each stage took."""

    frames: torch.Tensor  # uint8 [F, H, W, 3], CPU
    latents: torch.Tensor  # float32 [C, F_lat, H_lat, W_lat], CPU
    fps: int
    seed: int
    settings: Settings
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    peak_memory_bytes: int = 0
    expert_per_step: list[str] = field(default_factory=list)


def default_negative_prompt(preset: ModelPreset) -> str:
    """The preset's own negative prompt when it has one, else the official Chinese default."""
    neg = getattr(preset, "negative_prompt", None)
    return OFFICIAL_NEGATIVE_PROMPT if neg is None else neg


def latent_shape(preset: ModelPreset, settings: Settings) -> list[int]:
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

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.experts: list[str] = []
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="denoise", unit="step", file=sys.stderr)

    def __call__(self, i, n, stage, t) -> None:
        self.experts.append(stage.expert)
        if self.bar is not None:
            self.bar.set_postfix_str(f"expert={stage.expert} t={int(t)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class WanPipeline:
    """Loaded experts, text encoder and VAE, plus where each of them runs."""

    def __init__(self, preset: ModelPreset, experts: dict, text_encoder, vae, *,
                 device: torch.device, dtype: torch.dtype, offload: bool = False,
                 text_device: torch.device | None = None, source: str = "") -> None:
        self.preset = preset
        self.experts = experts  # name -> WanDiT, names as in preset.experts
        self.text_encoder = text_encoder
        self.vae = vae
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self.text_device = text_device or device
        self.source = source
        self.load_seconds = 0.0

    # ---- stages ----------------------------------------------------------------------------
    def settings(self, **kwargs) -> Settings:
        """Validate user values against this model (no computation)."""
        return settings_for(self.preset, **kwargs)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str | None) -> tuple[list, list]:
        """Two separate batch-1 encoder calls (spec §5.1); contexts land on the DiT device."""
        neg = default_negative_prompt(self.preset) if negative_prompt is None else negative_prompt
        model = self.text_encoder.model
        if self.offload and self.text_device.type == "cuda":
            model.to(self.text_device)  # official: T5 to the GPU to encode, then back
        cond = self.text_encoder.encode([prompt])
        uncond = self.text_encoder.encode([neg])
        if self.offload and self.text_device.type == "cuda":
            model.to("cpu")
        return [c.to(self.device) for c in cond], [u.to(self.device) for u in uncond]

    def _place(self, active: str) -> None:
        """Offload: only the active expert on the device."""
        for name, model in self.experts.items():
            model.to(self.device if name == active else "cpu")

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: list, uncond: list | None, settings: Settings, *,
               batched_cfg: bool = False, progress: bool = True) -> tuple[torch.Tensor, list[str]]:
        """Denoise `noise` [C, F, H, W] -> final latents, plus the expert used at every step."""
        from .models.experts import ExpertSchedule
        from .sampling import make_solver
        from .sampling.guidance import CFGDenoiser
        from .sampling.loop import denoise

        schedule = ExpertSchedule.from_preset(self.preset, boundary=settings.boundary,
                                              guidance=settings.guide_scale)
        solver = make_solver(settings.solver, settings.steps, settings.shift)
        for model in self.experts.values():
            model.set_compute_dtype(self.dtype)
        if self.offload:
            self._place(schedule.select(solver.timesteps[0]).expert)

        def on_stage_change(prev, new):
            if self.offload:
                self._place(new.expert)

        denoiser = CFGDenoiser(self.experts, cond, uncond, batched=batched_cfg)
        bar = _StepBar(settings.steps, progress)
        try:
            x = denoise(noise, solver, schedule, denoiser, progress=bar,
                        on_stage_change=on_stage_change)
        finally:
            bar.close()
            if self.offload:
                self._place("")  # official: every expert back to the CPU after the loop
        return x, bar.experts

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiling=None) -> torch.Tensor:
        """[C, F, h, w] -> uint8 [T, H, W, 3]; `tiling`: an optional `vae.tiling.TileSpec`."""
        video = self.vae.decode(latents[None].to(self.device, torch.float32),
                                tiling=tiling)  # [1, 3, T, H, W]
        return frames_to_uint8(video[0])

    # ---- the whole run ---------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str | None = None, size=None, frames=None,
                 steps=None, shift=None, guide_scale=None, boundary=None, solver="unipc",
                 seed=-1, batched_cfg=None, progress=True, *, boundary_snr=None,
                 settings: Settings | None = None, vae_tiling=None) -> GenerationResult:
        """Text -> video. Unset values are the preset's official defaults (spec §1.2)."""
        from .errors import InputError
        from .sampling.noise import initial_noise

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt is empty; describe the video to generate")
        from .preflight import check_prompts

        check_prompts(prompt, negative_prompt, self.preset.t5.text_len)
        if settings is None:
            settings = self.settings(size=size, frames=frames, steps=steps, shift=shift,
                                     guide_scale=guide_scale, boundary=boundary,
                                     boundary_snr=boundary_snr, solver=solver, seed=seed)
        from .preflight import check_memory

        check_memory(self.preset, settings.width, settings.height, settings.frames, self.device,
                     self.dtype, bool(batched_cfg))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings: dict[str, float] = {}
        with _timed(timings, "text_encode", self.device):
            cond, uncond = self.encode(prompt, negative_prompt)
        with _timed(timings, "denoise", self.device):
            noise = initial_noise(latent_shape(self.preset, settings), settings.seed, self.device)
            latents, used = self.sample(noise, cond, uncond, settings,
                                        batched_cfg=bool(batched_cfg), progress=progress)
        with _timed(timings, "vae_decode", self.device):
            video = self.decode(latents, vae_tiling)
        timings["total"] = sum(timings.values())
        return GenerationResult(frames=video, latents=latents.float().cpu(), fps=self.preset.fps,
                                seed=settings.seed, settings=settings, timings=timings,
                                peak_memory_bytes=peak_memory(self.device), expert_per_step=used)


# ---- loading ---------------------------------------------------------------------------------

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


def _dit_bytes(preset: ModelPreset, dtype: torch.dtype, weights=None) -> int:
    """Weight bytes of all experts at their storage dtypes, counted on a meta-built model."""
    from .models.dit import WanDiT
    from .runtime.quant.apply import is_block_linear

    with torch.device("meta"):
        model = WanDiT(preset.dit)
    per = 0
    for name, p in model.named_parameters():
        quantised = weights in ("fp8", "int8") and name.endswith(".weight") and is_block_linear(name[:-7])
        per += p.numel() * (1 if quantised else WanDiT.storage_dtype(name, dtype).itemsize)
    return per * len(preset.experts)


def choose_offload(offload, preset: ModelPreset, device: torch.device, dtype: torch.dtype,
                   weights=None) -> bool:
    """The documented rule: explicit value wins; CPU never offloads; CUDA offloads when big."""
    if offload is not None:
        return bool(offload) and device.type != "cpu"
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return _dit_bytes(preset, dtype, weights) > OFFLOAD_FRACTION * total


def _load_expert(spec, name: str, device: torch.device, dtype: torch.dtype, weights,
                 workspace=None):
    """One DiT expert; quantised files (GGUF) stay quantised, `weights` converts after loading.

    `workspace`: dequantisation buffers shared by the GGUF layers of all experts (they run one
    layer at a time, so one buffer per weight shape suffices).
    """
    from .loading.components import load_dit
    from .runtime.quant.apply import make_installer, quantize_model

    source, key_map = spec.experts[name], None
    if weights == "keep":
        source, key_map = _kept_source(source)
    try:
        model = load_dit(source, spec.preset.dit, compute_dtype=dtype, device=device,
                         key_map=key_map, install_quantized=make_installer(workspace, device=device))
    finally:
        if source is not spec.experts[name]:
            source.close()
    if weights in ("bf16", "fp8", "int8"):
        model = quantize_model(model, weights)
    return model.set_compute_dtype(dtype).eval()


def _kept_source(path):
    """`--weights keep`: a scaled-fp8 file is opened so its fp8 weights stay fp8 (FP8Linear).

    Other files are returned as the path: GGUF stays quantised anyway, float files load at the
    storage dtypes the compute dtype needs. Returns (source or path, key map or None).
    """
    from .loading.detect import detect_source
    from .loading.fp8_scaled import needs_scaling
    from .loading.keymaps import key_map_for
    from .loading.sources import open_tensors
    from .runtime.quant.apply import KeepScaledFP8Source

    inner, kept = open_tensors(path), None
    try:
        if needs_scaling(inner):
            kept = KeepScaledFP8Source(inner), key_map_for(detect_source(inner), inner.keys())
    finally:
        if kept is None:  # not scaled fp8, or refused: the caller never sees this handle
            inner.close()
    return kept or (path, None)


def load_pipeline(path=None, device=None, dtype=None, *, high=None, low=None, vae=None,
                  text_encoder=None, tokenizer=None, weights=None, offload=None,
                  text_encoder_device=None, spec=None, per_token_time: bool = False) -> WanPipeline:
    """Load a pipeline from a checkpoint folder (None: the built-in demo model).

    weights: None = the storage dtypes `dtype` needs (bf16 matmul weights under bf16, fp32
    under fp32; quantised files such as GGUF stay quantised); "keep" = as stored; "bf16" = block
    linears stored in bf16 even for fp32 compute (like the official --convert_model_dtype);
    "fp8"/"int8" = block linears quantised after loading (wanmoe.runtime.quant).
    per_token_time: embed the timestep for every token like upstream (`WanDiT.set_per_token_time`).
    """
    from .loading import components as C
    from .text.encoder import TextEncoder
    from .text.tokenizer import load_tokenizer
    from .validate import check_weights

    dev = parse_device(device)
    dt = parse_dtype(dtype if dtype is not None else ("bf16" if dev.type == "cuda" else "fp32"))
    check_weights(weights)
    text_dev = parse_device(text_encoder_device) if text_encoder_device is not None else dev
    t0 = time.perf_counter()
    if spec is None:
        spec = resolve(path, high=high, low=low, vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer)
    preset = spec.preset
    off = choose_offload(offload, preset, dev, dt, weights)
    dit_device = torch.device("cpu") if off else dev
    from .runtime.quant.linear import DequantWorkspace

    workspace = DequantWorkspace()
    tok = load_tokenizer(spec.tokenizer, text_len=preset.t5.text_len)  # a bad one fails before the weights
    experts = {e.name: _load_expert(spec, e.name, dit_device, dt, weights, workspace)
                       .set_per_token_time(per_token_time) for e in preset.experts}
    t5_dev = torch.device("cpu") if off else text_dev
    t5 = C.load_text_encoder(spec.text_encoder, dtype=dt, device=t5_dev)
    text = TextEncoder(tok, t5)
    vae_model = C.load_vae(spec.vae, cfg=preset.vae, device=dev)
    pipe = WanPipeline(preset, experts, text, vae_model, device=dev, dtype=dt, offload=off,
                       text_device=text_dev, source=str(spec.root or path or ""))
    pipe.load_seconds = time.perf_counter() - t0
    return pipe


def describe_memory(n: int) -> str:
    """Human-readable bytes (GiB/MiB)."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{max(n, 0)} B"


__all__ = ["GenerationResult", "WanPipeline", "load_pipeline", "frames_to_uint8", "latent_shape",
           "default_negative_prompt", "choose_offload", "describe_memory"]
