"""Checkpoint format detection from tensor names, shapes, dtypes and metadata (never file names).

The rules are pure functions: `detect_tensors(entries, metadata, config=)` over
`{name: (shape, dtype)}` and the config.json dict (tests run it on full-size manifests without
allocating), `t5_config_from_shapes`, `split_aux`, `classify`. `detect_source(src)` and
`detect_file(path)` are the two thin adapters that feed them a checkpoint's headers; folders of
whole models are resolved by `checkpoint.py` and described by `inspect.py` on top of these.
Only the expert role of a DiT file is read from its path (`expert_roles`): both experts have
identical layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from wanmoe.configs import TI2V_5B_DIT, A14B_DIT, UMT5_XXL, DiTConfig, T5Config
from wanmoe.errors import CheckpointError
from wanmoe.loading.containers import container_of, open_tensors, read_json
from wanmoe.loading.renames import common_prefix  # ComfyUI-style save prefixes, any component

MODEL_A14B = "Wan2.2 A14B expert"
MODEL_5B = "Wan2.2 TI2V-5B DiT"
MODEL_DIT_CUSTOM = "Wan DiT (custom dims)"
MODEL_VAE21 = "Wan2.1 VAE"
MODEL_VAE22 = "Wan2.2 VAE"
MODEL_UMT5 = "umT5-XXL encoder"
MODEL_T5_CUSTOM = "umT5 encoder (custom dims)"

FP8_SCALED_AUX = (".scale_weight", ".scale_input")  # ComfyUI legacy fp8_scaled
COMFY_QUANT_AUX = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale")
WHAT = {"dit": "a Wan DiT", "vae": "a Wan VAE", "text_encoder": "a umT5 text encoder", "tokenizer": "a tokenizer"}
NOTE_ROLE_UNKNOWN = "expert role (high/low noise) cannot be told from the weights"
NOTE_HEADS_UNKNOWN = "num_heads unknown"
HEAD_DIM = 128  # every published Wan DiT; heads cannot be read from shapes (qk-norm is full width)


@dataclass
class Detection:
    """What a checkpoint is: layout, component, model, dimensions and stored dtypes."""

    format: str
    component: str  # dit | vae | text_encoder | tokenizer | pipeline | unknown
    model: str
    dims: dict = field(default_factory=dict)
    dtypes: dict[str, dict[str, int]] = field(default_factory=dict)  # {dtype: {count, bytes}}
    total_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    naming: str = "official"  # official | diffusers | hf
    prefix: str = ""  # stripped name prefix ("model.diffusion_model.", ...)
    path: Path | None = None
    parts: dict[str, Detection] = field(default_factory=dict)  # per component, for folders

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.format, self.component, self.model)

    def dit_config(self) -> DiTConfig:
        """DiTConfig from the detected dims (error when the head count is unknown)."""
        d = self.dims
        if self.component != "dit" or not d.get("num_heads"):
            raise CheckpointError(f"{self.path}: no DiT config can be built from {self.component} "
                                  f"dims {d} (head count unknown: add a config.json with num_heads)")
        return DiTConfig(dim=d["dim"], ffn_dim=d["ffn_dim"], num_heads=d["num_heads"],
                         num_layers=d["num_layers"], in_dim=d["in_dim"], out_dim=d["out_dim"],
                         freq_dim=d["freq_dim"], text_dim=d["text_dim"],
                         patch_size=tuple(d["patch_size"]), **({"eps": d["eps"]} if "eps" in d else {}))

    def t5_config(self) -> T5Config:
        """T5Config from the detected dims (umT5-XXL defaults for what shapes do not carry)."""
        d = self.dims
        return replace(UMT5_XXL, vocab_size=d["vocab_size"], dim=d["dim"], dim_attn=d["dim_attn"],
                       dim_ffn=d["dim_ffn"], num_heads=d["num_heads"], num_layers=d["num_layers"],
                       num_buckets=d["num_buckets"])


# ---- tensor-level rules ---------------------------------------------------------------------

def quant_nbytes(shape, dtype: str) -> int:
    """Stored bytes of a tensor of a torch dtype name or a GGUF quant type name (0 if unknown)."""
    n = 1
    for s in shape:
        n *= int(s)
    import torch

    dt = getattr(torch, dtype, None)
    if isinstance(dt, torch.dtype):
        return n * dt.itemsize
    try:  # GGUF quant type: (block elements, block bytes)
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        blk, nb = GGML_QUANT_SIZES[GGMLQuantizationType[dtype]]
        return n // blk * nb
    except (ImportError, KeyError):
        return 0


def _histogram(entries: Mapping) -> tuple[dict[str, dict[str, int]], int]:
    hist: dict[str, dict[str, int]] = {}
    for e in entries.values():
        shape, dtype = e[0], str(e[1]).removeprefix("torch.")
        nb = e[2] if len(e) > 2 and e[2] is not None else quant_nbytes(shape, dtype)
        h = hist.setdefault(dtype, {"count": 0, "bytes": 0})
        h["count"] += 1
        h["bytes"] += nb
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]["bytes"])), sum(h["bytes"] for h in hist.values())


def split_aux(names) -> tuple[list[str], list[str], str]:
    """(core names, quant auxiliary names, quant layout "" | "fp8_scaled" | "comfy_quant")."""
    core, aux, kind = [], [], ""
    for n in names:
        if n.endswith(COMFY_QUANT_AUX):
            aux.append(n)
            kind = "comfy_quant"
        elif n.endswith(FP8_SCALED_AUX) or n.rsplit(".", 1)[-1] == "scaled_fp8" or n == "scaled_fp8":
            aux.append(n)
            kind = kind or "fp8_scaled"
        else:
            core.append(n)
    return core, aux, kind


_DIT_OFFICIAL = {"patch_embedding.weight", "head.head.weight", "time_projection.1.weight"}
_DIT_DIFFUSERS = {"patch_embedding.weight", "proj_out.weight", "condition_embedder.time_proj.weight"}
_VAE_OFFICIAL = {"encoder.conv1.weight", "decoder.conv1.weight", "conv2.weight"}
_VAE_DIFFUSERS = {"encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight"}
_T5_OFFICIAL = {"token_embedding.weight", "blocks.0.attn.q.weight", "norm.weight"}
_T5_HF = {"encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight"}
_T5_LLAMA_CPP = {"token_embd.weight", "enc.blk.0.attn_q.weight", "enc.output_norm.weight"}  # keymaps/t5_gguf.py


def classify(names: set[str]) -> tuple[str, str]:
    """(component, naming) from stripped core names."""
    for need, comp, naming in ((_DIT_OFFICIAL, "dit", "official"), (_DIT_DIFFUSERS, "dit", "diffusers"),
                               (_VAE_OFFICIAL, "vae", "official"), (_VAE_DIFFUSERS, "vae", "diffusers"),
                               (_T5_OFFICIAL, "text_encoder", "official"), (_T5_HF, "text_encoder", "hf"),
                               (_T5_LLAMA_CPP, "text_encoder", "llama.cpp")):
        if need <= names:
            return comp, naming
    return "unknown", "unknown"


def _count_blocks(names, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for n in names if (m := rx.match(n))}
    return max(idx) + 1 if idx else 0


def _dit_dims(shape, names, naming: str, config: Mapping | None, notes: list[str]) -> dict:
    diff = naming == "diffusers"
    pe = shape("patch_embedding.weight")  # [dim, in_dim, pt, ph, pw]
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    ffn_bias = "blocks.0.ffn.net.0.proj.bias" if diff else "blocks.0.ffn.0.bias"
    head_b = "proj_out.bias" if diff else "head.head.bias"
    text_w = "condition_embedder.text_embedder.linear_1.weight" if diff else "text_embedding.0.weight"
    time_w = "condition_embedder.time_embedder.linear_1.weight" if diff else "time_embedding.0.weight"
    npatch = patch[0] * patch[1] * patch[2]
    dims = {"dim": dim, "ffn_dim": shape(ffn_bias)[0], "num_layers": _count_blocks(names, r"blocks\.(\d+)\."),
            "in_dim": in_dim, "out_dim": shape(head_b)[0] // npatch, "text_dim": shape(text_w)[-1],
            "freq_dim": shape(time_w)[-1], "patch_size": list(patch)}
    heads = None
    if config:
        heads = config.get("num_heads") or config.get("num_attention_heads")
        if "eps" in config:
            dims["eps"] = config["eps"]
    if heads:
        notes.append("num_heads from config.json")
    elif dim % HEAD_DIM == 0:
        heads = dim // HEAD_DIM
        notes.append(f"num_heads cannot be read from DiT shapes; assumed dim // {HEAD_DIM} = {heads}")
    else:
        notes.append(f"{NOTE_HEADS_UNKNOWN}: dim {dim} is not a multiple of {HEAD_DIM} and there is no config.json")
    dims["num_heads"] = heads
    return dims


def _dit_model(d: dict) -> str:
    for cfg, label in ((A14B_DIT, MODEL_A14B), (TI2V_5B_DIT, MODEL_5B)):
        if (d["dim"], d["ffn_dim"], d["num_layers"], d["in_dim"], d["out_dim"]) == (
                cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.in_dim, cfg.out_dim):
            return label
    return MODEL_DIT_CUSTOM


def _vae_dims(shape, naming: str) -> dict:
    if naming == "official":
        enc, z, dec = shape("encoder.conv1.weight"), shape("conv2.weight"), shape("decoder.head.0.gamma")
    else:
        enc, z, dec = shape("encoder.conv_in.weight"), shape("post_quant_conv.weight"), shape("decoder.norm_out.gamma")
    version = "2.2" if enc[1] == 12 else "2.1"  # 2.2 patchifies 2x2 pixels -> 12 input channels
    return {"version": version, "dim": enc[0], "dec_dim": dec[0], "z_dim": z[0], "in_channels": enc[1]}


def _t5_dims(shape, names, naming: str) -> dict:
    if naming == "official":
        emb, q = shape("token_embedding.weight"), shape("blocks.0.attn.q.weight")
        fc1, pos = shape("blocks.0.ffn.fc1.weight"), shape("blocks.0.pos_embedding.embedding.weight")
        layers = _count_blocks(names, r"blocks\.(\d+)\.")
    elif naming == "llama.cpp":  # umT5 encoder GGUF (llama.cpp T5 tensor names)
        emb, q = shape("token_embd.weight"), shape("enc.blk.0.attn_q.weight")
        fc1, pos = shape("enc.blk.0.ffn_up.weight"), shape("enc.blk.0.attn_rel_b.weight")
        layers = _count_blocks(names, r"enc\.blk\.(\d+)\.")
    else:
        b0 = "encoder.block.0.layer."
        emb = shape("shared.weight" if "shared.weight" in names else "encoder.embed_tokens.weight")
        q, fc1 = shape(b0 + "0.SelfAttention.q.weight"), shape(b0 + "1.DenseReluDense.wi_1.weight")
        pos = shape(b0 + "0.SelfAttention.relative_attention_bias.weight")
        layers = _count_blocks(names, r"encoder\.block\.(\d+)\.")
    return {"vocab_size": emb[0], "dim": emb[1], "dim_attn": q[0], "dim_ffn": fc1[0],
            "num_heads": pos[1], "num_buckets": pos[0], "num_layers": layers}


# llama.cpp T5 hyper-parameter keys (`{arch}.` prefix) -> our dims (docs/loading.md)
_GGUF_T5_KEYS = {"embedding_length": "dim", "feed_forward_length": "dim_ffn", "block_count": "num_layers",
                 "attention.head_count": "num_heads", "attention.relative_buckets_count": "num_buckets"}


def _check_gguf_t5_metadata(metadata: Mapping, dims: dict, notes: list[str]) -> None:
    """Cross-check a T5 GGUF's `{arch}.*` hyper-parameters against the dims read from the shapes
    (the shapes win; a disagreement means a broken file)."""
    arch = metadata.get("general.architecture")
    notes.append(f"llama.cpp T5 GGUF (general.architecture {arch!r}; token_embd, enc.blk.N.*): "
                 "quantised tensors stay quantised on load (linears and the token embedding)")
    if not isinstance(arch, str):
        return
    for key, dim in _GGUF_T5_KEYS.items():
        value = metadata.get(f"{arch}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and value != dims[dim]:
            raise CheckpointError(f"GGUF metadata {arch}.{key} = {value} but the tensor shapes give "
                                  f"{dim} = {dims[dim]}; the file is inconsistent")


def _format_of(container: str, quant: str, has_fp8: bool, naming: str, prefix: str) -> str:
    if container == "gguf":
        return "gguf"
    if quant == "comfy_quant":
        return "comfy-quant"
    if quant == "fp8_scaled":
        return "comfy-fp8-scaled"
    if has_fp8:
        return "fp8-cast"
    if naming == "diffusers":
        return "diffusers"
    if naming == "hf":
        return "hf-transformers"
    if prefix:
        return "single-file-comfy-prefixed"
    return "official-sharded" if container == "sharded" else "single-file-official"


def detect_tensors(entries: Mapping[str, tuple], metadata: Mapping | None = None, *,
                   container: str = "safetensors", config: Mapping | None = None) -> Detection:
    """Detect from `{name: (shape, dtype_str[, nbytes])}` plus header metadata and config.json."""
    metadata = metadata or {}
    core, aux, quant = split_aux(entries)
    if "_quantization_metadata" in metadata:
        quant = "comfy_quant"
    prefix = common_prefix(core)
    names = {n[len(prefix):] for n in core}
    comp, naming = classify(names)
    hist, total = _histogram(entries)
    has_fp8 = any(k.startswith("float8") for k in hist)
    notes: list[str] = []
    det = Detection(format=_format_of(container, quant, has_fp8, naming, prefix), component=comp,
                    model="unknown", dtypes=hist, total_bytes=total, notes=notes, naming=naming, prefix=prefix)
    if prefix:
        notes.append(f"names carry the prefix {prefix!r} (stripped on load)")
    if comp == "unknown":
        notes.append("no DiT, VAE or umT5 name pattern matched; sample names: " + ", ".join(sorted(names)[:4]))
        return det

    def shape(n: str):
        return tuple(entries[prefix + n][0])

    try:
        if comp == "dit":
            det.dims = _dit_dims(shape, names, naming, config, notes)
            det.model = _dit_model(det.dims)
            notes.append(NOTE_ROLE_UNKNOWN)
        elif comp == "vae":
            det.dims = _vae_dims(shape, naming)
            det.model = MODEL_VAE22 if det.dims["version"] == "2.2" else MODEL_VAE21
        else:
            det.dims = _t5_dims(shape, names, naming)
            if naming == "llama.cpp":
                _check_gguf_t5_metadata(metadata, det.dims, notes)
            u = UMT5_XXL
            same = (det.dims["dim"], det.dims["num_layers"], det.dims["vocab_size"]) == (u.dim, u.num_layers, u.vocab_size)
            det.model = MODEL_UMT5 if same else MODEL_T5_CUSTOM
    except KeyError as e:
        raise CheckpointError(f"{comp} checkpoint lacks the tensor {e.args[0]!r} needed to read its dimensions") from None
    except (IndexError, ZeroDivisionError, TypeError, ValueError) as e:  # shapes of the wrong rank
        raise CheckpointError(f"{comp} checkpoint has tensor shapes that do not fit a Wan {comp} "
                              f"({type(e).__name__}: {e})") from None
    if quant:
        notes.append(f"{len(aux)} quantisation scale/marker tensors ({quant})")
    return det


def t5_config_from_shapes(shapes: Mapping[str, tuple], text_len: int = 512) -> T5Config:
    """umT5 encoder config from tensor names and shapes (official or HF `UMT5EncoderModel` names)."""
    names = set(shapes)
    comp, naming = classify(names)
    if comp != "text_encoder":
        raise CheckpointError(
            "not a umT5 encoder state dict: expected official names such as token_embedding.weight, "
            "blocks.N.attn.q.weight, blocks.N.pos_embedding.embedding.weight (or their HF names); "
            f"sample names: {', '.join(sorted(names)[:4])}")
    try:
        d = _t5_dims(lambda n: tuple(shapes[n]), names, naming)
    except KeyError as e:
        raise CheckpointError(f"umT5 encoder state dict lacks the tensor {e.args[0]!r} needed to read its "
                              "dimensions") from None
    return T5Config(vocab_size=d["vocab_size"], dim=d["dim"], dim_attn=d["dim_attn"], dim_ffn=d["dim_ffn"],
                    num_heads=d["num_heads"], num_layers=d["num_layers"], num_buckets=d["num_buckets"],
                    text_len=text_len)


# ---- adapters: headers of an opened source or a file ------------------------------------------

def detect_source(src, config: Mapping | None = None) -> Detection:
    """Detection of an already opened TensorSource (headers only), `path` set to the source's."""
    entries = {k: (src.shape(k), str(src.dtype(k)).removeprefix("torch."), src.nbytes(k)) for k in src.keys()}
    det = detect_tensors(entries, src.metadata, container=container_of(src), config=config)
    det.path = src.path
    return det


def detect_file(path: str | Path) -> Detection:
    """Detect one weights file, shard index, or folder holding one weight set."""
    p = Path(path)
    with open_tensors(p) as src:
        # config.json describes a folder's weights: read it for a folder or a shard set only
        cfg_path = (p if p.is_dir() else p.parent) / "config.json"
        own_folder = p.is_dir() or container_of(src) == "sharded"
        config = read_json(cfg_path) if own_folder and cfg_path.is_file() else None
        det = detect_source(src, config)
        if config is not None and det.component == "dit":
            from wanmoe.loading.json_files import check_dit_config

            check_dit_config(cfg_path, config)
    det.path = p
    return det


# ---- expert roles ---------------------------------------------------------------------------

_HIGH = re.compile(r"high[_\-\s]?noise|(?:^|[^a-z])high(?:[^a-z]|$)", re.I)
_LOW = re.compile(r"low[_\-\s]?noise|(?:^|[^a-z])low(?:[^a-z]|$)", re.I)


def path_role(path: str | Path) -> str | None:
    """"high_noise" / "low_noise" when the file name (or else a parent folder) says so."""
    p = Path(path)
    for part in (p.name, *(q.name for q in p.parents)):
        hi, lo = bool(_HIGH.search(part)), bool(_LOW.search(part))
        if hi != lo:
            return "high_noise" if hi else "low_noise"
    return None


@dataclass(frozen=True)
class ExpertRoles:
    """Which of two expert files is the high-noise one, as far as their paths say."""

    high: Path | None
    low: Path | None
    note: str


def expert_roles(path_a: str | Path, path_b: str | Path) -> ExpertRoles:
    """Tell high/low noise experts apart by path; the weights themselves cannot say."""
    ra, rb = path_role(path_a), path_role(path_b)
    a, b = Path(path_a), Path(path_b)
    if ra and rb and ra != rb:
        hi, lo = (a, b) if ra == "high_noise" else (b, a)
        return ExpertRoles(hi, lo, f"high noise: {hi} ; low noise: {lo} (from the paths)")
    return ExpertRoles(None, None, "which expert is high and which low noise cannot be told from the weights "
                                   "(both have the same layout) and the paths do not say; pass them as --high / --low")
