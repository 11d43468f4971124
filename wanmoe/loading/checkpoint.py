"""Resolve a checkpoint folder (or explicit component files) into a validated `CheckpointSpec`.

Layouts: the official A14B and TI2V-5B folders (spec §8.1), the diffusers folder
(`model_index.json`) and the wanmoe-native folder (`wanmoe.json`, docs/architecture.md).
Everything is checked from headers before any weights load: files exist, each file is the
component it was given as, both experts are the same model, VAE z_dim == DiT in_dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from wanmoe.configs import (T2V_A14B, TI2V_5B, WAN21_VAE, WAN22_VAE, DiTConfig, ModelPreset, VAEConfig,
                            preset_from_dict)
from wanmoe.errors import CheckpointError
from wanmoe.loading.containers import is_tokenizer_dir, read_json
from wanmoe.loading.detect import MODEL_A14B, WHAT, Detection, detect_file
from wanmoe.loading.json_files import check_dit_config, check_tokenizer_json, check_types
A14B_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
COMPONENTS = ("text_encoder", "vae", "tokenizer")


@dataclass
class CheckpointSpec:
    """Every file a pipeline needs, with the preset and the detected layout of each."""

    preset: ModelPreset
    experts: dict[str, Path]  # ExpertSpec.name -> weights file / shard folder
    text_encoder: Path
    tokenizer: Path
    vae: Path
    detections: dict[str, Detection] = field(default_factory=dict)  # role -> Detection
    layout: str = "files"
    root: Path | None = None

    @property
    def formats(self) -> dict[str, str]:
        """role -> detected format (from `detections`)."""
        return {role: det.format for role, det in self.detections.items()}


def _one(folder: Path, pattern: str, default: str) -> Path:
    found = sorted(folder.glob(pattern))
    return found[0] if found else folder / default


def _layout(root: Path) -> tuple[str, dict[str, Path], dict | None]:
    """(layout name, default role -> path, wanmoe.json dict or None) of a checkpoint folder."""
    if (root / "wanmoe.json").is_file():
        meta = read_json(root / "wanmoe.json")
        files = meta.get("files")
        if (meta.get("format") != "wanmoe" or not isinstance(meta.get("preset"), dict)
                or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values())):
            raise CheckpointError(f"{root / 'wanmoe.json'} is not a wanmoe checkpoint description "
                                  "(needs format='wanmoe', a preset object and files: role -> path)")
        return "wanmoe-dir", {k: root / v for k, v in meta["files"].items()}, meta
    tok = root / "google" / "umt5-xxl"
    if (root / "model_index.json").is_file():
        paths = {"high_noise": root / "transformer", "text_encoder": root / "text_encoder",
                 "tokenizer": root / "tokenizer", "vae": root / "vae"}
        if (root / "transformer_2").is_dir():  # diffusers: transformer = high noise, transformer_2 = low
            paths["low_noise"] = root / "transformer_2"
        else:
            paths["dense"] = paths.pop("high_noise")
        return "diffusers-dir", paths, None
    if (root / "high_noise_model").is_dir() or (root / "low_noise_model").is_dir():
        return "official-dir-a14b", {
            "high_noise": root / "high_noise_model", "low_noise": root / "low_noise_model",
            "text_encoder": _one(root, "models_t5_*.pth", A14B_T5), "tokenizer": tok,
            "vae": root / "Wan2.1_VAE.pth"}, None
    if (root / "config.json").is_file():
        return "official-dir-ti2v5b", {
            "dense": root, "text_encoder": _one(root, "models_t5_*.pth", A14B_T5), "tokenizer": tok,
            "vae": root / "Wan2.2_VAE.pth"}, None
    raise CheckpointError(f"{root} is not a known checkpoint folder: expected wanmoe.json, model_index.json "
                          "(diffusers), high_noise_model/ + low_noise_model/ (official A14B) or config.json "
                          "(official TI2V-5B)")


def _check_component(role: str, det: Detection, path: Path) -> None:
    want = role if role in COMPONENTS else "dit"
    if det.component != want:
        raise CheckpointError(f"{path} is {det.model} ({det.component}, {det.format}) but was given as the "
                              f"{role.replace('_', ' ')}; expected {WHAT[want]}")


def _check_tokenizer(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"tokenizer {path} does not exist (expected a folder with tokenizer.json "
                              "or spiece.model, or a tokenizer.json file)")
    if path.is_dir() and not is_tokenizer_dir(path):
        raise CheckpointError(f"tokenizer folder {path} holds neither tokenizer.json nor spiece.model")
    tok_json = path / "tokenizer.json" if path.is_dir() else path
    if tok_json.is_file():
        check_tokenizer_json(tok_json)  # a garbage tokenizer.json fails here, not after the weights


def _dit_from_config(det: Detection, folder: Path) -> DiTConfig:
    """DiT config: config.json when there is one (official or diffusers keys), else shapes."""
    cfg_path = folder / "config.json" if folder.is_dir() else None
    d = det.dims
    if cfg_path is None or not cfg_path.is_file():
        return det.dit_config()
    c = read_json(cfg_path)
    check_dit_config(cfg_path, c)  # ints are ints, dim divisible by heads, ...
    if "num_attention_heads" in c:  # diffusers WanTransformer3DModel
        heads = c["num_attention_heads"]
        vals = {"dim": heads * c["attention_head_dim"], "num_heads": heads, "in_dim": c["in_channels"],
                "out_dim": c["out_channels"]}
    else:
        vals = {k: c[k] for k in ("dim", "num_heads", "in_dim", "out_dim") if k in c}
    for k in ("ffn_dim", "num_layers", "freq_dim", "text_dim", "text_len", "eps"):
        if k in c:
            vals[k] = c[k]
    if "patch_size" in c:
        vals["patch_size"] = tuple(c["patch_size"])
    base = {k: d[k] for k in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim")}
    base.update(patch_size=tuple(d["patch_size"]), num_heads=d.get("num_heads"))
    base.update(vals)
    if not base.get("num_heads"):
        raise CheckpointError(f"{cfg_path} gives no num_heads and it cannot be read from the shapes; "
                              "add num_heads (or num_attention_heads) to it")
    return DiTConfig(**base)


def vae_config_from_detection(det: Detection) -> VAEConfig:
    """VAEConfig of a detected VAE (published mean/std when z_dim matches, else neutral)."""
    d = det.dims
    base = WAN22_VAE if d["version"] == "2.2" else WAN21_VAE
    if d["z_dim"] != base.z_dim:  # not a published VAE: neutral latent normalisation
        return replace(base, dim=d["dim"], dec_dim=d["dec_dim"], z_dim=d["z_dim"],
                       mean=(0.0,) * d["z_dim"], std=(1.0,) * d["z_dim"])
    return replace(base, dim=d["dim"], dec_dim=d["dec_dim"])


def _given(high, low, vae, text_encoder, tokenizer) -> dict[str, Path]:
    out = {"high_noise": high, "low_noise": low, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
    return {k: Path(v) for k, v in out.items() if v is not None}


def resolve_checkpoint(path=None, *, high=None, low=None, vae=None, text_encoder=None,
                       tokenizer=None) -> CheckpointSpec:
    """Find and validate every component of a checkpoint; explicit files override the folder's."""
    given = _given(high, low, vae, text_encoder, tokenizer)
    layout, paths, meta, root = "files", {}, None, None
    if path is not None:
        root = Path(path)
        if not root.exists():
            raise CheckpointError(f"checkpoint path {root} does not exist")
        if root.is_dir() and not _is_weights_dir(root):
            layout, paths, meta = _layout(root)
        else:  # a single DiT file (or shard folder): dense unless --high/--low say otherwise
            paths = {"dense": root}
    if "dense" in paths and ({"high_noise", "low_noise"} & set(given)):
        paths["high_noise"] = paths.pop("dense")
    paths.update(given)
    for role in ("text_encoder", "vae", "tokenizer"):
        if role not in paths:
            raise CheckpointError(f"no {role.replace('_', ' ')} given: pass --{role.replace('_', '-')} PATH "
                                  f"(or a checkpoint folder that holds one)")
    dets = _detect_all(paths)
    experts = {r: p for r, p in paths.items() if r not in COMPONENTS}
    if meta is None:
        _check_experts(experts, dets)
    where = root / "wanmoe.json" if meta is not None else next(iter(experts.values()))
    try:
        preset = _preset(meta, experts, dets)
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as e:  # refused by the dataclasses
        raise CheckpointError(f"{where}: the model dimensions are inconsistent or malformed "
                              f"({type(e).__name__}: {e})") from None
    check_types(preset, where)  # ints are ints (wanmoe.json is built with whatever it holds)
    given_experts = sorted(experts)
    experts = {e.name: experts[e.name] for e in preset.experts if e.name in experts}
    if not experts or len(experts) != len(preset.experts):
        raise CheckpointError(f"{where}: the preset names experts {[e.name for e in preset.experts]} "
                              f"but the checkpoint gives {given_experts}")
    _check_compat(preset, experts, paths, dets)
    return CheckpointSpec(preset=preset, experts=experts, text_encoder=paths["text_encoder"],
                          tokenizer=paths["tokenizer"], vae=paths["vae"], detections=dets,
                          layout=layout, root=root)


def _is_weights_dir(p: Path) -> bool:
    """A folder holding one weight set (shards + index, or one .safetensors) but no pipeline."""
    markers = ("wanmoe.json", "model_index.json", "high_noise_model", "low_noise_model")
    if any((p / m).exists() for m in markers) or any(p.glob("models_t5_*.pth")):
        return False
    return any(p.glob("*.safetensors.index.json")) or len(list(p.glob("*.safetensors"))) == 1


def _detect_all(paths: dict[str, Path]) -> dict[str, Detection]:
    dets = {}
    for role, p in paths.items():
        if not p.exists():
            raise CheckpointError(f"{role.replace('_', ' ')} file {p} does not exist")
        if role == "tokenizer":
            _check_tokenizer(p)
            continue
        det = detect_file(p)  # a weight set, never a whole-pipeline folder
        _check_component(role, det, p)
        dets[role] = det
    return dets


def _check_experts(experts: dict[str, Path], dets: dict[str, Detection]) -> None:
    if not experts:
        raise CheckpointError("no DiT given: pass a checkpoint folder, a DiT file, or --high and --low")
    if "dense" in experts and len(experts) > 1:
        raise CheckpointError("a dense DiT and --high/--low experts were both given; pass one or the other")
    if "dense" in experts and dets["dense"].model == MODEL_A14B:
        raise CheckpointError(f"{experts['dense']} is one expert of the two-expert A14B model; "
                              "pass both experts with --high and --low (or the whole folder)")
    if "dense" not in experts and len(experts) != 2:
        have = next(iter(experts))
        raise CheckpointError(f"only the {have.replace('_', ' ')} expert was given ({experts[have]}); "
                              "a two-expert model needs both --high and --low")
    a, b = (dets[r] for r in experts) if len(experts) == 2 else (None, None)
    if a is not None and (a.model, a.dims) != (b.model, b.dims):
        ra, rb = list(experts)
        raise CheckpointError(f"the experts are different models: {experts[ra]} is {a.model} {a.dims}, "
                              f"{experts[rb]} is {b.model} {b.dims}")


def _preset(meta: dict | None, experts: dict[str, Path], dets: dict[str, Detection]) -> ModelPreset:
    if meta is not None:
        return preset_from_dict(meta["preset"])
    role = next(iter(experts))
    dit = _dit_from_config(dets[role], experts[role])
    base = T2V_A14B if "dense" not in experts else TI2V_5B
    return replace(base, dit=dit, vae=vae_config_from_detection(dets["vae"]), t5=dets["text_encoder"].t5_config())


def _check_compat(preset: ModelPreset, experts, paths, dets) -> None:
    dit_path = next(iter(experts.values()))
    z = dets["vae"].dims["z_dim"]
    if z != preset.dit.in_dim:
        raise CheckpointError(f"VAE {paths['vae']} has z_dim {z} ({dets['vae'].model}) but DiT {dit_path} has "
                              f"in_dim {preset.dit.in_dim}; they must be equal (A14B uses the Wan2.1 VAE, "
                              "TI2V-5B the Wan2.2 VAE)")
    t5_dim = dets["text_encoder"].dims["dim"]
    if t5_dim != preset.dit.text_dim:
        raise CheckpointError(f"text encoder {paths['text_encoder']} has width {t5_dim} but DiT {dit_path} "
                              f"expects text_dim {preset.dit.text_dim}")
    want = {e.name for e in preset.experts}
    if set(experts) != want:
        raise CheckpointError(f"preset {preset.name} needs experts {sorted(want)} but the checkpoint gives "
                              f"{sorted(experts)}")
