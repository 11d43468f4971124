"""Write state dicts as checkpoint files and folders in the real release layouts (spec §8.1).

The official folder and file names, the official `config.json` keys, diffusers-style shard sets
with their index, the umT5 `.pth`, the VAE `.pth`, the wanmoe-native folder (`wanmoe.json`) and
the `*-Diffusers` layout produced from an official folder through the project's key maps. The
weights themselves come from `states.py`; `tiny.py` and `small.py` choose the sizes.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from wanmoe.configs import WAN21_VAE, WAN22_VAE, DiTConfig, ModelPreset, preset_to_dict

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
SHARD = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _save_file(state: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def dit_config_json(cfg: DiTConfig, model_type: str = "t2v") -> dict:
    """The official DiT config.json key set (spec §8.2)."""
    return {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": model_type,
            "text_len": cfg.text_len, "in_dim": cfg.in_dim, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "freq_dim": cfg.freq_dim, "out_dim": cfg.out_dim, "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "eps": cfg.eps}


def write_sharded(folder, state: Mapping[str, torch.Tensor], config: dict | None = None,
                  shards: int = 2) -> Path:
    """diffusers-style shard set `diffusion_pytorch_model-0000k-of-0000n.safetensors` + index
    (+ `config.json` when given); returns the index path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for k in range(shards):
        part = {n: state[n] for n in names[k * per:(k + 1) * per]}
        fname = SHARD.format(k + 1, shards)
        _save_file(part, folder / fname)
        weight_map.update({n: fname for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = folder / INDEX
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return index


def write_stub_tokenizer(folder) -> Path:
    """A folder marked as a tokenizer (`tokenizer.json` = "{}"): enough for layout detection."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def write_official_a14b(root, experts: tuple[Mapping, Mapping], dit_config: dict, t5: Mapping,
                        vae: Mapping) -> Path:
    """`Wan2.2-T2V-A14B/`: high_noise_model/ and low_noise_model/ shard sets with config.json,
    the umT5 `.pth` and `Wan2.1_VAE.pth`. The caller writes the `google/umt5-xxl/` tokenizer."""
    root = Path(root)
    for folder, state in zip(("high_noise_model", "low_noise_model"), experts):
        write_sharded(root / folder, state, dit_config)
    torch.save(dict(t5), root / T5_FILE)
    torch.save(dict(vae), root / "Wan2.1_VAE.pth")
    return root


def write_official_ti2v5b(root, dit: Mapping, dit_config: dict, t5: Mapping, vae: Mapping) -> Path:
    """`Wan2.2-TI2V-5B/`: one shard set + config.json at the root, the umT5 `.pth` and
    `Wan2.2_VAE.pth`. The caller writes the `google/umt5-xxl/` tokenizer."""
    root = Path(root)
    write_sharded(root, dit, dit_config)
    torch.save(dict(t5), root / T5_FILE)
    torch.save(dict(vae), root / "Wan2.2_VAE.pth")
    return root


def write_wanmoe_folder(root, preset: ModelPreset, states: Mapping[str, Mapping],
                        tokenizer_json: Path | None = None) -> Path:
    """wanmoe-native folder (docs/architecture.md): `<role>.safetensors` per expert, text_encoder
    and vae, `tokenizer.json` (copied, or a stub) and `wanmoe.json`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, state in states.items():
        files[role] = f"{role}.safetensors"
        _save_file(state, root / files[role])
    if tokenizer_json is None:
        (root / "tokenizer.json").write_text("{}")
    else:
        shutil.copy(tokenizer_json, root / "tokenizer.json")
    files["tokenizer"] = "tokenizer.json"
    meta = {"format": "wanmoe", "version": 1, "preset": preset_to_dict(preset), "files": files}
    (root / "wanmoe.json").write_text(json.dumps(meta, indent=2))
    return root


# ---- official -> diffusers, through the key maps ---------------------------------------------

def read_all(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or folder, as stored."""
    from wanmoe.loading.containers import open_tensors

    with open_tensors(path) as src:
        return {k: src.get(k).contiguous() for k in src.keys()}


def _save_st(folder: Path, fname: str, state: dict, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _save_file(state, folder / fname)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _transformer_config(official: dict, state: dict) -> dict:
    """diffusers WanTransformer3DModel config for an official config.json + weights."""
    heads = official["num_heads"]
    return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0",
            "added_kv_proj_dim": None, "attention_head_dim": official["dim"] // heads,
            "cross_attn_norm": True, "eps": official["eps"], "ffn_dim": official["ffn_dim"],
            "freq_dim": official["freq_dim"], "image_dim": None, "in_channels": official["in_dim"],
            "num_attention_heads": heads, "num_layers": official["num_layers"],
            "out_channels": official["out_dim"], "patch_size": [1, 2, 2], "pos_embed_seq_len": None,
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
            "text_dim": state["text_embedding.0.weight"].shape[1]}


def _convert_dit(src: Path, dst: Path) -> None:
    from wanmoe.loading.keymaps.dit import official_to_diffusers

    state = read_all(src)
    official = json.loads((src / "config.json").read_text())
    _save_st(dst, "diffusion_pytorch_model.safetensors",
             {official_to_diffusers(k): v for k, v in state.items()}, _transformer_config(official, state))


def _convert_t5(src: Path, dst: Path) -> None:
    from wanmoe.loading.keymaps.t5 import official_to_hf

    state = read_all(src)
    vocab, dim = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    config = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": vocab,
              "d_model": dim, "d_kv": state["blocks.0.attn.q.weight"].shape[0] // heads,
              "d_ff": state["blocks.0.ffn.fc1.weight"].shape[0], "num_layers": layers,
              "num_heads": heads, "relative_attention_num_buckets": buckets,
              "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
              "dense_act_fn": "gelu_new", "is_gated_act": True, "layer_norm_epsilon": 1e-6,
              "dropout_rate": 0.1, "tie_word_embeddings": False, "scalable_attention": True,
              "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
              "torch_dtype": "bfloat16"}
    _save_st(dst, "model.safetensors", {official_to_hf(k): v for k, v in state.items()}, config)


def _convert_vae(src: Path, dst: Path) -> None:
    from wanmoe.loading.keymaps.vae import official_to_diffusers

    state = read_all(src)
    version = "2.2" if state["encoder.conv1.weight"].shape[1] == 12 else "2.1"
    base = WAN22_VAE if version == "2.2" else WAN21_VAE
    config = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.35.0",
              "base_dim": state["encoder.conv1.weight"].shape[0], "z_dim": base.z_dim,
              "dim_mult": list(base.dim_mult), "num_res_blocks": base.num_res_blocks,
              "attn_scales": [], "temperal_downsample": list(base.temporal_downsample),
              "dropout": 0.0, "latents_mean": list(base.mean), "latents_std": list(base.std)}
    if version == "2.2":
        config.update(decoder_base_dim=state["decoder.head.0.gamma"].shape[0], is_residual=True,
                      in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                      scale_factor_spatial=16)
    _save_st(dst, "diffusion_pytorch_model.safetensors",
             {official_to_diffusers(k, version): v for k, v in state.items()}, config)


def convert_to_diffusers_layout(src_dir, dst_dir) -> Path:
    """Official folder -> the `Wan2.2-*-Diffusers` layout, renamed through the key maps."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    a14b = (src / "high_noise_model").is_dir()
    if a14b:
        _convert_dit(src / "high_noise_model", dst / "transformer")
        _convert_dit(src / "low_noise_model", dst / "transformer_2")
    else:
        _convert_dit(src, dst / "transformer")
    _convert_t5(src / T5_FILE, dst / "text_encoder")
    _convert_vae(src / ("Wan2.1_VAE.pth" if a14b else "Wan2.2_VAE.pth"), dst / "vae")
    shutil.copytree(src / TOKENIZER_DIR, dst / "tokenizer", dirs_exist_ok=True)
    (dst / "scheduler").mkdir(exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.35.0",
        "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True,
        "flow_shift": 3.0 if a14b else 5.0, "solver_order": 2, "solver_type": "bh2",
        "lower_order_final": True, "final_sigmas_type": "zero"}, indent=2))
    d = ["diffusers", "WanTransformer3DModel"]
    index = {"_class_name": "WanPipeline", "_diffusers_version": "0.35.0",
             "boundary_ratio": 0.875 if a14b else None, "expand_timesteps": not a14b,
             "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": d,
             "transformer_2": d if a14b else [None, None], "vae": ["diffusers", "AutoencoderKLWan"]}
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
    return dst


def convert_to_wanmoe_layout(src_dir, dst_dir) -> Path:
    """Any checkpoint folder -> a wanmoe-native folder (`wanmoe.json`, the demo model's layout)."""
    from wanmoe.loading.checkpoint import resolve_checkpoint

    spec = resolve_checkpoint(src_dir)
    parts = {**spec.experts, "text_encoder": spec.text_encoder, "vae": spec.vae}
    return write_wanmoe_folder(dst_dir, spec.preset, {role: read_all(p) for role, p in parts.items()},
                               Path(spec.tokenizer) / "tokenizer.json")
