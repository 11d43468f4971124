"""Quantised umT5 encoder weights: GGUF linears kept as blocks, fp8 / int8 made while loading.

The T5 counterpart of `apply.py` (which serves the DiT): which T5 tensors are linears that may
stay quantised, and the `install_quantized` callback `stream_load` calls for every tensor that
arrives quantised (`GGUFWeight` from a GGUF file, `ChannelWeight` from `--text-weights fp8|int8`).

* a linear weight (q, k, v, o, gate, fc1, fc2 of every block) becomes a `GGUFLinear`,
  `FP8Linear` or `Int8Linear`: the one weight path, dequantised per matmul into the input dtype;
* a quantised token embedding (llama.cpp quants store it like the linears) stays quantised
  as a `GGUFEmbedding`: each lookup dequantises only the rows of the ids it is given (GGUF
  blocks run along a row, so the values are exactly those of the whole table dequantised);
  with `keep_embedding=False` it is dequantised once into the T5's dtype instead;
* anything else stored quantised (in principle a norm or position table) is dequantised once,
  row chunk by row chunk (no float32 copy of a large table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from wanmoe.errors import CheckpointError, InputError
from wanmoe.runtime.quant.gguf_dequant import GGUFWeight, dequantize
from wanmoe.runtime.quant.linear import DequantWorkspace, FP8Linear, GGUFLinear, Int8Linear
from wanmoe.runtime.quant.quantize import quantize_fp8, quantize_int8
from wanmoe.runtime.weights import set_module

TEXT_WEIGHT_MODES = ("fp8", "int8")  # --text-weights; None = as stored
# official names of the umT5 block linears (module paths, no ".weight")
T5_LINEAR_RE = re.compile(r"^blocks\.\d+\.(attn\.[qkvo]|ffn\.(gate\.0|fc1|fc2))$")
EMBEDDING = "token_embedding.weight"
EMBED_CHUNK_ROWS = 8192  # rows dequantised at a time (umT5-XXL: 8192 x 4096 fp32 = 128 MiB)


def check_text_weights(mode: str | None) -> str | None:
    """None or one of TEXT_WEIGHT_MODES; InputError otherwise."""
    if mode is not None and mode not in TEXT_WEIGHT_MODES:
        raise InputError(f"text weights {mode!r} is not one of {', '.join(TEXT_WEIGHT_MODES)} "
                         "(leave it unset to keep the file's weights)")
    return mode


def is_t5_linear_weight(name: str) -> bool:
    """True for the `.weight` of a umT5 block linear (`blocks.3.ffn.fc1.weight`)."""
    module, _, leaf = name.rpartition(".")
    return leaf == "weight" and T5_LINEAR_RE.match(module) is not None


@dataclass
class ChannelWeight:
    """A per-output-channel quantised weight: `weight` (float8_e4m3fn or int8) * `scale` [out, 1]."""

    kind: str  # "fp8" | "int8"
    weight: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scale.reshape(-1, 1)).to(dtype)


def quantize_channel(w: torch.Tensor | GGUFWeight, kind: str) -> ChannelWeight:
    """A float (or GGUF, dequantised to float32 first) weight -> fp8 / int8 with channel scales."""
    if isinstance(w, GGUFWeight):
        w = w.dequantize(torch.float32)
    q, scale = (quantize_fp8 if kind == "fp8" else quantize_int8)(w)
    return ChannelWeight(kind, q, scale)


def dequantize_rows(value: GGUFWeight, dtype: torch.dtype, chunk: int = EMBED_CHUNK_ROWS) -> torch.Tensor:
    """A 2-D GGUF tensor as a dense `dtype` tensor, decoded `chunk` rows at a time into the
    result (never a float32 copy of the whole table)."""
    shape = tuple(value.shape)
    if len(shape) != 2:
        return value.dequantize(dtype)
    rows, cols = shape
    out = torch.empty(shape, dtype=dtype)
    data = value.data.reshape(rows, -1)
    for r in range(0, rows, chunk):
        n = min(chunk, rows - r)
        dequantize(data[r:r + n], value.qtype, (n, cols), dtype, out=out[r:r + n])
    return out


class GGUFEmbedding(nn.Module):
    """Token embedding kept in GGUF blocks; a lookup dequantises the looked-up rows only.

    Holds uint8 `[num_embeddings, row_bytes]`; `dtype` is the output dtype (the encoder's).
    """

    def __init__(self, weight: GGUFWeight, dtype: torch.dtype) -> None:
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"an embedding table is 2-D, got shape {weight.shape}")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.qtype, self.dtype = weight.qtype, dtype
        self.register_buffer("qweight", weight.data, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.qweight.index_select(0, flat)  # [n, row_bytes]
        out = dequantize(rows, self.qtype, (flat.numel(), self.embedding_dim), self.dtype)
        return out.reshape(*ids.shape, self.embedding_dim)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole table, dense (for checks; the forward never builds it)."""
        return dequantize(self.qweight, self.qtype, (self.num_embeddings, self.embedding_dim), dtype or self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}, dtype={self.dtype}"


def text_installer(dtype: torch.dtype, device=None, workspace: DequantWorkspace | None = None,
                   keep_embedding: bool = True):
    """`install_quantized(module, name, value)` for `stream_load` into a `UMT5Encoder`."""

    def install(model: nn.Module, name: str, value) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if is_t5_linear_weight(name) and isinstance(owner, nn.Linear):
            _check_shape(name, value.shape, (owner.out_features, owner.in_features))
            set_module(model, owner_name, _quant_linear(value, device, workspace))
            return
        if keep_embedding and name == EMBEDDING and isinstance(value, GGUFWeight) and isinstance(owner, nn.Embedding):
            _check_shape(name, value.shape, (owner.num_embeddings, owner.embedding_dim))
            set_module(model, owner_name, GGUFEmbedding(value if device is None else value.to(device), dtype))
            return
        target = getattr(owner, leaf, None)
        if not isinstance(target, torch.Tensor) or not isinstance(value, GGUFWeight):
            raise CheckpointError(f"tensor {name!r} is stored quantised ({type(value).__name__}) but is "
                                  "not a umT5 linear weight or a GGUF table")
        _check_shape(name, value.shape, tuple(target.shape))
        dense = dequantize_rows(value, dtype)
        setattr(owner, leaf, nn.Parameter(dense if device is None else dense.to(device), requires_grad=False))

    return install


def _quant_linear(value, device, workspace) -> nn.Module:
    if isinstance(value, GGUFWeight):
        return GGUFLinear(value if device is None else value.to(device), None, workspace)
    if isinstance(value, ChannelWeight):
        w, s = (value.weight, value.scale) if device is None else (value.weight.to(device), value.scale.to(device))
        return FP8Linear(w, s, None, workspace=workspace) if value.kind == "fp8" else Int8Linear(w, s, None, workspace)
    raise TypeError(f"cannot install a {type(value).__name__} as a umT5 linear weight")


def _check_shape(name: str, got, want) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(got)} but the umT5 encoder expects {tuple(want)}")
