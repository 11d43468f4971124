"""Prompt -> context tensors: tokenizer + umT5 encoder, the official per-prompt call (spec §5.3)."""

from __future__ import annotations

import torch

from wanmoe.text.tokenizer import PromptTokenizer
from wanmoe.text.umt5 import UMT5Encoder


def cpu_lacks_bf16() -> bool:
    """True when this CPU has no native bf16 matmul (e.g. AVX2-only): bf16 GEMMs are emulated."""
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # torch built without oneDNN
        return True


class TextEncoder:
    """Encodes each prompt in its own batch-1 call and trims it to its real length (incl. EOS).

    `matmul_upcast`: None (default) turns `UMT5Encoder.set_matmul_upcast` on only for a bf16
    model on a CPU without native bf16 (several times faster, same bf16-GEMM semantics up to
    summation order), re-decided at each `encode` for where the model is then (an encoder
    waiting on the CPU that encodes on the GPU runs the GPU's bf16 kernels); False keeps the
    plain bf16 kernels, True forces the upcast.
    """

    def __init__(self, tokenizer: PromptTokenizer, model: UMT5Encoder,
                 matmul_upcast: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self._auto_upcast = matmul_upcast is None
        self.matmul_upcast = self._upcast_here() if matmul_upcast is None else matmul_upcast
        model.set_matmul_upcast(self.matmul_upcast)

    def _upcast_here(self) -> bool:
        """The automatic choice for where the model is now (it may have moved to a GPU to encode)."""
        weight = self.model.norm.weight  # the token embedding may be a quantised table
        return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and cpu_lacks_bf16()

    @property
    def device(self) -> torch.device:
        """Where the model runs: the device of its weights (CPU for a `--t5-cpu` setup)."""
        return self.model.norm.weight.device

    @property
    def text_len(self) -> int:
        """Padded prompt length: the tokenizer's (set from the model preset, e.g. 512 for umT5-XXL).

        The encoder's own config cannot know it: dims inferred from tensor shapes carry no length.
        """
        return self.tokenizer.text_len

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> list[torch.Tensor]:
        """Returns one `[L_i, dim]` tensor per prompt in the model's dtype, on the model's device.

        Like the official code every prompt is a separate batch-1 forward over the full padded
        length (`text_len`), so results do not depend on which prompts are encoded together.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if self._auto_upcast and self._upcast_here() != self.matmul_upcast:  # moved since the last call
            self.matmul_upcast = self._upcast_here()
            self.model.set_matmul_upcast(self.matmul_upcast)
        out = []
        for prompt in prompts:
            ids, mask = self.tokenizer([prompt], text_len=self.text_len)  # [1, text_len] each
            ids, mask = ids.to(self.device), mask.to(self.device)
            context = self.model(ids, mask)  # [1, text_len, dim]
            length = int(mask.gt(0).sum())
            out.append(context[0, :length])
        return out
