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
    """Tokenizer (umT5 conventions: <pad>=0, </s>=1, <unk>=2, Metaspace, `$A </s>`) on captions.

    BPE rather than umT5's Unigram: the `tokenizers` Unigram trainer collapses to ~135 mostly
    single-character pieces on this 79-word vocabulary ("red" -> r, e, d), while BPE learns
    whole-word pieces and still falls back to characters for unseen words.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    from wanmoe.text.train_tokenizer import SPECIAL_TOKENS

    tok = Tokenizer(BPE(unk_token="<unk>"))
    # Only ASCII letters, digits and spaces are kept, case folded: the demo knows English captions
    # only, and the official Chinese negative prompt shrinks to "jpeg" + EOS (a short unconditional
    # input that fits the 32-token context).
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"[^\x00-\x7F]+"), ""), normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[^a-z0-9 ]+"), " "),
        normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(caption_corpus(n, seed), trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return tok


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
