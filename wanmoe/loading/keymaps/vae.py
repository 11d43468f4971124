"""VAE key names: official Wan (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`) <-> diffusers `AutoencoderKLWan`.

Declarative: a table of blocks (official prefix, diffusers prefix, block kind) expanded with the
leaf names of each kind into the complete list of tensor-name pairs, so both directions are plain
dict lookups and the map is a bijection by construction (checked at full size against the shared
manifests in tests/unit/test_vae_keymaps.py). Facts used (formats.md §2, diffusers'
`AutoencoderKLWan` source):

* Wan2.1: `encoder.downsamples.k` is a flat list (residual blocks and resamples) and keeps its
  index as `down_blocks.k`; the flat `decoder.upsamples.k` is regrouped per stage into
  `up_blocks.j.resnets.r` / `up_blocks.j.upsamplers.0`.
* Wan2.2: `encoder.downsamples.i.downsamples.j` -> `down_blocks.i.resnets.j` / `.downsampler`,
  `decoder.upsamples.i.upsamples.j` -> `up_blocks.i.resnets.j` / `.upsampler`.
* Both: `middle.{0,1,2}` -> `mid_block.{resnets.0, attentions.0, resnets.1}`, `head.{0,2}` ->
  `norm_out`/`conv_out`, `conv1`/`conv2` -> `quant_conv`/`post_quant_conv`; RMS-norm scales
  keep the name `gamma`.
"""

from __future__ import annotations

from functools import lru_cache

from wanmoe.errors import CheckpointError

# leaf names per block kind: (official suffix, diffusers suffix)
LEAVES: dict[str, tuple[tuple[str, str], ...]] = {
    "conv": (("weight", "weight"), ("bias", "bias")),
    "norm": (("gamma", "gamma"),),
    "res": (("residual.0.gamma", "norm1.gamma"),
            ("residual.2.weight", "conv1.weight"), ("residual.2.bias", "conv1.bias"),
            ("residual.3.gamma", "norm2.gamma"),
            ("residual.6.weight", "conv2.weight"), ("residual.6.bias", "conv2.bias"),
            ("shortcut.weight", "conv_shortcut.weight"), ("shortcut.bias", "conv_shortcut.bias")),
    "attn": (("norm.gamma", "norm.gamma"), ("to_qkv.weight", "to_qkv.weight"), ("to_qkv.bias", "to_qkv.bias"),
             ("proj.weight", "proj.weight"), ("proj.bias", "proj.bias")),
    "resample": (("resample.1.weight", "resample.1.weight"), ("resample.1.bias", "resample.1.bias"),
                 ("time_conv.weight", "time_conv.weight"), ("time_conv.bias", "time_conv.bias")),
}

VERSIONS = ("2.1", "2.2")
LAYOUTS = ("official", "diffusers")


def _shared_blocks(part: str) -> list[tuple[str, str, str]]:
    """conv_in, middle and head of the encoder or decoder (same in both versions)."""
    return [(f"{part}.conv1.", f"{part}.conv_in.", "conv"),
            (f"{part}.middle.0.", f"{part}.mid_block.resnets.0.", "res"),
            (f"{part}.middle.1.", f"{part}.mid_block.attentions.0.", "attn"),
            (f"{part}.middle.2.", f"{part}.mid_block.resnets.1.", "res"),
            (f"{part}.head.0.", f"{part}.norm_out.", "norm"),
            (f"{part}.head.2.", f"{part}.conv_out.", "conv")]


def _stage_blocks(version: str, nrb: int, stages: int) -> list[tuple[str, str, str]]:
    """The down/up stages: where the two layouts differ."""
    out: list[tuple[str, str, str]] = []
    k = 0  # flat index (Wan2.1)
    for i in range(stages):
        has_resample = i != stages - 1
        for j in range(nrb + (1 if has_resample else 0)):
            kind = "res" if j < nrb else "resample"
            if version == "2.1":
                out.append((f"encoder.downsamples.{k}.", f"encoder.down_blocks.{k}.", kind))
                k += 1
            else:
                dif = f"resnets.{j}." if kind == "res" else "downsampler."
                out.append((f"encoder.downsamples.{i}.downsamples.{j}.", f"encoder.down_blocks.{i}.{dif}", kind))
    k = 0
    for i in range(stages):
        has_resample = i != stages - 1
        for j in range(nrb + 1 + (1 if has_resample else 0)):
            kind = "res" if j <= nrb else "resample"
            if version == "2.1":
                dif = f"resnets.{j}." if kind == "res" else "upsamplers.0."
                out.append((f"decoder.upsamples.{k}.", f"decoder.up_blocks.{i}.{dif}", kind))
                k += 1
            else:
                dif = f"resnets.{j}." if kind == "res" else "upsampler."
                out.append((f"decoder.upsamples.{i}.upsamples.{j}.", f"decoder.up_blocks.{i}.{dif}", kind))
    return out


@lru_cache(maxsize=8)
def name_pairs(version: str, num_res_blocks: int = 2, stages: int = 4) -> tuple[tuple[str, str], ...]:
    """Every possible (official, diffusers) tensor-name pair of a VAE layout (a superset of any file:
    residual blocks without a channel change have no shortcut, Wan2.1-style resamples no time_conv)."""
    if version not in VERSIONS:
        raise CheckpointError(f"VAE version {version!r} is not one of {list(VERSIONS)}")
    blocks = (_shared_blocks("encoder") + [("conv1.", "quant_conv.", "conv"), ("conv2.", "post_quant_conv.", "conv")]
              + _shared_blocks("decoder") + _stage_blocks(version, num_res_blocks, stages))
    return tuple((o + lo, d + ld) for o, d, kind in blocks for lo, ld in LEAVES[kind])


@lru_cache(maxsize=8)
def _tables(version: str, num_res_blocks: int, stages: int) -> tuple[dict[str, str], dict[str, str]]:
    pairs = name_pairs(version, num_res_blocks, stages)
    o2d, d2o = dict(pairs), {d: o for o, d in pairs}
    assert len(o2d) == len(d2o) == len(pairs), "VAE key table is not a bijection"
    return o2d, d2o


def _lookup(name: str, version: str, num_res_blocks: int, stages: int, to_diffusers: bool) -> str:
    o2d, d2o = _tables(version, num_res_blocks, stages)
    table = o2d if to_diffusers else d2o
    if name not in table:
        what = (f"an official Wan{version} VAE key" if to_diffusers
                else f"a diffusers AutoencoderKLWan key of the Wan{version} VAE")
        raise CheckpointError(f"VAE tensor {name!r} is not {what} "
                              f"({num_res_blocks} residual blocks per stage, {stages} stages); "
                              f"see wanmoe/loading/keymaps/vae.py for the accepted names")
    return table[name]


def official_to_diffusers(name: str, version: str, num_res_blocks: int = 2, stages: int = 4) -> str:
    """Official Wan VAE tensor name -> diffusers AutoencoderKLWan name."""
    return _lookup(name, version, num_res_blocks, stages, to_diffusers=True)


def diffusers_to_official(name: str, version: str, num_res_blocks: int = 2, stages: int = 4) -> str:
    """diffusers AutoencoderKLWan tensor name -> official Wan VAE name."""
    return _lookup(name, version, num_res_blocks, stages, to_diffusers=False)


def to_official(name: str, version: str, layout: str = "official") -> str:
    """Canonical official name of a tensor stored in `layout` ("official" or "diffusers")."""
    if layout == "official":
        official_to_diffusers(name, version)  # validates: raises CheckpointError on an unknown key
        return name
    if layout == "diffusers":
        return diffusers_to_official(name, version)
    raise CheckpointError(f"VAE key layout {layout!r} is unknown; choose one of {list(LAYOUTS)}")
