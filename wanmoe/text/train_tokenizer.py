"""Train a small Unigram tokenizer with the umT5 conventions (tests and the demo model)."""

from __future__ import annotations

import json

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in umT5
# tokenizers' UnigramTrainer gives each required character the EM pruned away the score
# min_score + k * 1e-4, with k in Rust hash-set order, which changes from call to call
_REQUIRED_CHAR_STEP = 1e-4


def train_unigram_tokenizer(corpus: list[str], vocab_size: int):
    """Unigram model + Metaspace pre-tokenizer; `<pad>`=0, `</s>`=1, `<unk>`=2; appends `</s>`.

    The pipeline mirrors the umT5 `tokenizer.json`: an NFKC normaliser that also folds runs of
    spaces (SentencePiece's `nmt_nfkc` + extra-whitespace removal), Metaspace("▁", prepend
    always) pre-tokenisation and decoding, and a `$A </s>` template post-processor. Training is
    deterministic for a given corpus (see `_canonical_vocab`). Returns a `tokenizers.Tokenizer`.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if not corpus:
        raise ValueError("corpus is empty; give at least one caption to train the tokenizer on")
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.model = Unigram(_canonical_vocab(json.loads(tok.to_str())["model"]["vocab"]),
                        unk_id=SPECIAL_TOKENS.index("<unk>"))
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    for i, name in enumerate(SPECIAL_TOKENS):  # the trainer places specials first, in order
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    return tok


def _canonical_vocab(vocab: list) -> list[tuple[str, float]]:
    """The trainer's [piece, score] list made independent of hash-map iteration order.

    The trainer's output varies between calls in two ways: the required characters padded in at
    min_score + k * 1e-4 get their k in random order, and pieces with equal scores come in random
    order (the last bits of the EM scores vary too). Here the padded characters take the same
    scores sorted by character, scores are rounded to 1e-9, and pieces are sorted by (score
    descending, piece); the specials keep ids 0-2. Token ids then depend only on the corpus.
    """
    n = len(SPECIAL_TOKENS)
    specials, rest = [tuple(v) for v in vocab[:n]], [tuple(v) for v in vocab[n:]]
    low = min(s for _, s in rest)

    def padded(piece: str, score: float) -> bool:
        k = (score - low) / _REQUIRED_CHAR_STEP
        return len(piece) == 1 and round(k) < len(rest) and abs(k - round(k)) < 1e-6

    block = [(p, s) for p, s in rest if padded(p, s)]
    moved = dict(zip(sorted(p for p, _ in block), sorted((s for _, s in block), reverse=True)))
    out = sorted(((p, round(moved.get(p, s), 9)) for p, s in rest), key=lambda ps: (-ps[1], ps[0]))
    return specials + out
