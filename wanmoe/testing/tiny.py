"""Tiny random checkpoints written in the real release layouts (spec §8.1, formats.md §3).

Widths are tiny, but everything a loader reads is real: the official folder and file names, the
official `config.json` keys, a 2-shard safetensors set with its index, the umT5 `.pth` in bf16,
the VAE `.pth` in fp32, a `google/umt5-xxl/tokenizer.json`, and the diffusers layout produced
from them through the project's key maps. Channel counts are fixed by the VAE family (z 16 for
the Wan2.1 VAE / A14B, z 48 for the Wan2.2 VAE / TI2V-5B).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from wanmoe.configs import (OFFICIAL_NEGATIVE_PROMPT, WAN21_VAE, WAN22_VAE, DiTConfig, T5Config,
                            VAEConfig)

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
SHARD = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
TEXT_DIM = 32  # tiny umT5 width == DiT text_dim

CORPUS = (
    "a red ball rolls to the right on a dark blue background",
    "a yellow square moves up on a black background",
    "a green circle bounces slowly across a white floor",
    "two blue triangles spin around each other in the night sky",
    "a cat walks along a wooden fence at sunset, cinematic lighting",
    "close-up of ocean waves crashing on black rocks, slow motion",
    "a small boat sails across a calm lake under a cloudy sky",
    "an astronaut rides a horse on the moon, high detail",
    OFFICIAL_NEGATIVE_PROMPT,
)


def tiny_dit_config(in_dim: int) -> DiTConfig:
    """2 layers, 2 heads of the official head dim 128 (RoPE split 44/42/42; GGUF files carry no
    head count and loaders assume dim // 128), official text_len and freq_dim."""
    return DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=in_dim, out_dim=in_dim,
                     text_dim=TEXT_DIM)


def tiny_t5_config(vocab_size: int) -> T5Config:
    return T5Config(vocab_size=vocab_size, dim=TEXT_DIM, dim_attn=TEXT_DIM, dim_ffn=64, num_heads=4,
                    num_layers=2)


def tiny_vae_config(version: str) -> VAEConfig:
    """Published family (stride, z, normalisation constants) with tiny widths."""
    from dataclasses import replace

    return replace(WAN22_VAE, dim=8, dec_dim=16) if version == "2.2" else replace(WAN21_VAE, dim=8, dec_dim=8)


# ---- random weights --------------------------------------------------------------------------

def _shapes(build) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of a module built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def random_state(shapes: dict, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Well-scaled random weights: norms ~1, matrices ~1/sqrt(fan_in), biases ~0.1."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        r = torch.randn(shape, generator=gen)
        if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
            v = 1.0 + 0.1 * r
        elif len(shape) >= 2:
            v = r / math.sqrt(max(1, math.prod(shape[1:])))
        else:
            v = 0.1 * r
        out[name] = v.to(dtype).contiguous()
    return out


def dit_state(cfg: DiTConfig, seed: int) -> dict[str, torch.Tensor]:
    from wanmoe.models.dit import WanDiT

    return random_state(_shapes(lambda: WanDiT(cfg)), seed)


def t5_state(cfg: T5Config, seed: int) -> dict[str, torch.Tensor]:
    from wanmoe.text.umt5 import UMT5Encoder

    return random_state(_shapes(lambda: UMT5Encoder(cfg)), seed, torch.bfloat16)


def vae_state(cfg: VAEConfig, seed: int) -> dict[str, torch.Tensor]:
    from wanmoe.vae import build_vae

    return random_state(_shapes(lambda: build_vae(cfg)), seed)


# ---- writers ---------------------------------------------------------------------------------

def dit_config_json(cfg: DiTConfig, model_type: str) -> dict:
    """The official config.json key set (spec §8.2)."""
    return {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": model_type,
            "text_len": cfg.text_len, "in_dim": cfg.in_dim, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "freq_dim": cfg.freq_dim, "out_dim": cfg.out_dim, "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "eps": cfg.eps}


def write_sharded(folder: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """diffusers-style shard set: `diffusion_pytorch_model-0000k-of-0000n.safetensors` + index."""
    from safetensors.torch import save_file

    names = list(state)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for k in range(shards):
        part = {n: state[n] for n in names[k * per:(k + 1) * per]}
        fname = SHARD.format(k + 1, shards)
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                            "weight_map": weight_map}, indent=2))


def write_dit_folder(folder: Path, cfg: DiTConfig, model_type: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dit_config_json(cfg, model_type), indent=2))
    write_sharded(folder, dit_state(cfg, seed))


def write_tokenizer(folder: Path, vocab_size: int = 256) -> int:
    """google/umt5-xxl-style tokenizer folder; returns the vocabulary size actually trained."""
    from wanmoe.text.train_tokenizer import train_unigram_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_unigram_tokenizer(list(CORPUS), vocab_size)
    tok.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5TokenizerFast", "model_max_length": 512, "extra_ids": 0,
         "additional_special_tokens": [], **special}, indent=2))
    return tok.get_vocab_size()


def _write_common(root: Path, vae_version: str, vae_file: str, seed: int) -> None:
    vocab = write_tokenizer(root / TOKENIZER_DIR)
    torch.save(t5_state(tiny_t5_config(vocab), seed + 100), root / T5_FILE)
    torch.save(vae_state(tiny_vae_config(vae_version), seed + 200), root / vae_file)


def write_tiny_official_a14b(root, seed: int = 0) -> Path:
    """Tiny `Wan2.2-T2V-A14B/` folder: two experts (different weights), umT5, Wan2.1 VAE."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_dit_config(WAN21_VAE.z_dim)
    write_dit_folder(root / "high_noise_model", cfg, "t2v", seed + 1)
    write_dit_folder(root / "low_noise_model", cfg, "t2v", seed + 2)
    _write_common(root, "2.1", "Wan2.1_VAE.pth", seed)
    return root


def write_tiny_official_ti2v5b(root, seed: int = 0) -> Path:
    """Tiny `Wan2.2-TI2V-5B/` folder: one dense DiT at the root, umT5, Wan2.2 VAE."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_dit_config(WAN22_VAE.z_dim)
    write_dit_folder(root, cfg, "ti2v", seed + 1)
    _write_common(root, "2.2", "Wan2.2_VAE.pth", seed)
    return root


# ---- diffusers layout ------------------------------------------------------------------------

def _read_all(path: Path) -> dict[str, torch.Tensor]:
    from wanmoe.loading.containers import open_tensors

    with open_tensors(path) as src:
        return {k: src.get(k).contiguous() for k in src.keys()}


def _save_st(folder: Path, fname: str, state: dict, config: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / fname), metadata={"format": "pt"})
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

    state = _read_all(src)
    official = json.loads((src / "config.json").read_text())
    _save_st(dst, "diffusion_pytorch_model.safetensors",
             {official_to_diffusers(k): v for k, v in state.items()}, _transformer_config(official, state))


def _convert_t5(src: Path, dst: Path) -> None:
    from wanmoe.loading.keymaps.t5 import official_to_hf

    state = _read_all(src)
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

    state = _read_all(src)
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
    """Official tiny folder -> the `Wan2.2-*-Diffusers` layout, renamed through the key maps."""
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
    """Official tiny folder -> a wanmoe-native folder (`wanmoe.json`, the demo model's layout)."""
    from safetensors.torch import save_file

    from wanmoe.configs import preset_to_dict
    from wanmoe.loading.checkpoint import resolve_checkpoint

    spec = resolve_checkpoint(src_dir)
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    files = {}
    parts = {**spec.experts, "text_encoder": spec.text_encoder, "vae": spec.vae}
    for role, path in parts.items():
        files[role] = f"{role}.safetensors"
        save_file(_read_all(path), str(dst / files[role]))
    shutil.copy(Path(spec.tokenizer) / "tokenizer.json", dst / "tokenizer.json")
    files["tokenizer"] = "tokenizer.json"
    meta = {"format": "wanmoe", "version": 1, "preset": preset_to_dict(spec.preset), "files": files}
    (dst / "wanmoe.json").write_text(json.dumps(meta, indent=2))
    return dst
