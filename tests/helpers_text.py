"""Shared pieces of the text-encoder tests: random caption corpora for tiny tokenizers
(the error metric is `tolerance.rel_err`).

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import random


def captions(words: list[str], count: int, min_words: int, max_words: int, end: str = "") -> list[str]:
    """`count` seeded random captions of `min_words`..`max_words` words from `words`, each + `end`."""
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) + end
            for _ in range(count)]


def random_hf_umt5(vocab: int, d: int, heads: int, dkv: int, ffn: int, layers: int,
                   seed: int = 0, std: float = 0.1):
    """A transformers `UMT5EncoderModel` with random weights that matter: HF's init leaves the
    norms at 1 and the bias tables tiny, so norms ~U(0.5, 1.5), bias tables ~N(0, 1), the
    embedding ~N(0, 0.3) and every other weight ~N(0, std)."""
    import torch
    import transformers

    cfg = transformers.UMT5Config(
        vocab_size=vocab, d_model=d, d_kv=dkv, d_ff=ffn, num_layers=layers, num_heads=heads,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.3 if "shared" in name else std)
    return model


def ids_and_mask(valid: list[int], vocab: int, length: int):
    """Seeded random token ids [B, length] (ids >= 3) with EOS (1) at the end of each row's
    `valid` tokens and padding (0) after it, as the tokenizer writes them; plus the mask."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (len(valid), length), generator=g)
    mask = torch.zeros(len(valid), length, dtype=torch.int64)
    for row, n in enumerate(valid):
        mask[row, :n] = 1
        ids[row, n - 1] = 1  # EOS
        ids[row, n:] = 0  # padding
    return ids, mask
