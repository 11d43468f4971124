"""Text side of demo training: caption-vocabulary tokenizer and a trainable tiny umT5.

Choice (documented in docs/demo.md): the umT5 encoder starts from random init and is trained
jointly with the DiT experts at a lower learning rate, so colour and direction words get
separable embeddings; at inference it is frozen like the real one.
"""

from __future__ import annotations

import random

import torch

from wanmoe.configs import T5Config
from wanmoe.demo.clips import caption, sample_scene


def caption_corpus(n: int, seed: int = 0) -> list[str]:
    """n captions of training scenes (each with a fresh template draw)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = sample_scene(seed * 1_000_003 + i)
        out.append(caption(s.objects, s.background, rng))
    return out


def train_caption_tokenizer(vocab_size: int, n: int = 5000, seed: int = 0):
    """Unigram tokenizer (umT5 conventions) trained on the caption vocabulary."""
    from wanmoe.text.train_tokenizer import train_unigram_tokenizer

    return train_unigram_tokenizer(caption_corpus(n, seed), vocab_size)


def build_text_model(cfg: T5Config, seed: int = 0):
    """A randomly initialised `UMT5Encoder` (small normal init, as T5 does)."""
    from wanmoe.text.umt5 import UMT5Encoder

    torch.manual_seed(seed)
    model = UMT5Encoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 if "embedding" in name else p.shape[-1] ** -0.5)
    return model


def encode_batch(model, tok, prompts: list[str]) -> list[torch.Tensor]:
    """Differentiable twin of `TextEncoder.encode`: one [L_i, dim] per prompt, trimmed to its
    real length incl. EOS (batched; masks make it equal to per-prompt calls)."""
    ids, mask = tok(prompts, text_len=model.cfg.text_len)
    out = model(ids, mask)  # [B, text_len, dim]
    lens = mask.sum(1).tolist()
    return [out[i, :n] for i, n in enumerate(lens)]
