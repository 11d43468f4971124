"""Frozen architecture configs and named model presets.

Architecture is data: every field a checkpoint can differ in is a required field here, derived
values are properties, and the published constants live once in the presets at the bottom.
Runtime settings (device, dtype, offload, quantisation) do not belong in this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Official default negative prompt (spec §1.4): 137 characters, always used by the official CLI.
OFFICIAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class DiTConfig:
    """Wan DiT (WanModel) hyper-parameters, official meaning of every field."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Real dims of the (frame, height, width) RoPE parts: 44/42/42 for head dim 128."""
        hd = self.head_dim
        return (hd - 4 * (hd // 6), 2 * (hd // 6), 2 * (hd // 6))


@dataclass(frozen=True)
class T5Config:
    """umT5 encoder hyper-parameters (official T5Encoder naming)."""

    vocab_size: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads


@dataclass(frozen=True)
class VAEConfig:
    """Causal video VAE hyper-parameters; version "2.1" (z16, 4x8x8) or "2.2" (z48, 4x16x16)."""

    version: str
    dim: int  # encoder base width
    dec_dim: int  # decoder base width (== dim for 2.1)
    z_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    def __post_init__(self) -> None:
        if self.version not in ("2.1", "2.2"):
            raise ValueError(f"VAE version {self.version!r} is not one of '2.1', '2.2'")
        if len(self.mean) != self.z_dim or len(self.std) != self.z_dim:
            raise ValueError(f"mean/std need {self.z_dim} values, got {len(self.mean)}/{len(self.std)}")

    @property
    def patch(self) -> int:
        """Pixel patchify factor applied before the encoder (2 for Wan2.2, 1 for Wan2.1)."""
        return 2 if self.version == "2.2" else 1

    @property
    def stride(self) -> tuple[int, int, int]:
        """(time, height, width) compression factor."""
        s = 2 ** (len(self.dim_mult) - 1) * self.patch
        return (2 ** sum(self.temporal_downsample), s, s)


WAN21_VAE_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_VAE_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_VAE_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
    0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
    0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
    -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_VAE_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
    0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
    0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
    0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclass(frozen=True)
class ExpertSpec:
    """One expert of a preset: its name and the guidance scale the official config gives it."""

    name: str  # "high_noise", "low_noise" or "dense"
    guidance: float


@dataclass(frozen=True)
class ModelPreset:
    """A named model: architectures plus the official inference defaults (spec §1.2)."""

    name: str
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Config
    experts: tuple[ExpertSpec, ...]  # ordered from highest noise to lowest
    boundary: float | None  # timestep fraction where the high-noise expert hands over (None: dense)
    shift: float
    steps: int
    frames: int
    fps: int
    size: tuple[int, int]  # default (W, H)
    sizes: tuple[tuple[int, int], ...] = field(default=())  # officially supported (W, H)
    num_train_timesteps: int = 1000

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE stride x DiT patch)."""
        return self.vae.stride[1] * self.dit.patch_size[1]


WAN21_VAE = VAEConfig(version="2.1", dim=96, dec_dim=96, z_dim=16,
                      mean=WAN21_VAE_MEAN, std=WAN21_VAE_STD)
WAN22_VAE = VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48,
                      mean=WAN22_VAE_MEAN, std=WAN22_VAE_STD)
UMT5_XXL = T5Config(vocab_size=256384, dim=4096, dim_attn=4096, dim_ffn=10240,
                    num_heads=64, num_layers=24)

A14B_DIT = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16)
TI2V_5B_DIT = DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48)

T2V_A14B = ModelPreset(
    name="t2v-A14B", dit=A14B_DIT, vae=WAN21_VAE, t5=UMT5_XXL,
    experts=(ExpertSpec("high_noise", 4.0), ExpertSpec("low_noise", 3.0)),
    boundary=0.875, shift=12.0, steps=40, frames=81, fps=16, size=(1280, 720),
    sizes=((1280, 720), (720, 1280), (832, 480), (480, 832)),
)
TI2V_5B = ModelPreset(
    name="ti2v-5B", dit=TI2V_5B_DIT, vae=WAN22_VAE, t5=UMT5_XXL,
    experts=(ExpertSpec("dense", 5.0),),
    boundary=None, shift=5.0, steps=50, frames=121, fps=24, size=(1280, 704),
    sizes=((1280, 704), (704, 1280)),
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (T2V_A14B, TI2V_5B)}


def get_preset(name: str) -> ModelPreset:
    """Look up a preset by name, with a clear error listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_to_dict(preset: ModelPreset) -> dict:
    """JSON-ready dict of a preset (the `wanmoe.json` of a wanmoe-native checkpoint folder)."""
    from dataclasses import asdict

    return asdict(preset)


def preset_from_dict(d: dict) -> ModelPreset:
    """Inverse of `preset_to_dict`; lists from JSON become the tuples the dataclasses use."""

    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    dit = DiTConfig(**{k: tup(v) for k, v in d["dit"].items()})
    vae = VAEConfig(**{k: tup(v) for k, v in d["vae"].items()})
    t5 = T5Config(**d["t5"])
    experts = tuple(ExpertSpec(**e) for e in d["experts"])
    rest = {k: tup(v) for k, v in d.items() if k not in ("dit", "vae", "t5", "experts")}
    return ModelPreset(dit=dit, vae=vae, t5=t5, experts=experts, **rest)
