"""Train a small Unigram tokenizer with the umT5 conventions (tests and the demo model)."""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in umT5


def train_unigram_tokenizer(corpus: list[str], vocab_size: int):
    """Unigram model + Metaspace pre-tokenizer; `<pad>`=0, `</s>`=1, `<unk>`=2; appends `</s>`.

    The pipeline mirrors the umT5 `tokenizer.json`: an NFKC normaliser that also folds runs of
    spaces (SentencePiece's `nmt_nfkc` + extra-whitespace removal), Metaspace("▁", prepend
    always) pre-tokenisation and decoding, and a `$A </s>` template post-processor. Returns a
    `tokenizers.Tokenizer`. Not reproducible: the trainer's hash maps make the pieces, ids and
    scores change from run to run; `fixed_unigram_tokenizer` is the reproducible twin.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    _check_args(corpus, vocab_size)
    tok = Tokenizer(Unigram())
    _umt5_pipeline(tok)
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return _finish(tok)


def fixed_unigram_tokenizer(corpus: list[str], vocab_size: int):
    """A reproducible Unigram tokenizer with the same conventions, built without training.

    Pieces: the specials, then every character of the (normalised) corpus and as many whole
    words (with the `▁` word marker) as fit in `vocab_size`, scored by log relative frequency
    and ordered by (score, piece). The same corpus always gives the same file, so tiny test
    checkpoints, and the latents computed from them, are the same in every process.
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    _check_args(corpus, vocab_size)
    probe = Tokenizer(Unigram([("<unk>", 0.0)], unk_id=0, byte_fallback=False))
    _umt5_pipeline(probe)
    words, chars = Counter(), Counter()
    for text in corpus:
        norm = probe.normalizer.normalize_str(text)
        for piece, _ in probe.pre_tokenizer.pre_tokenize_str(norm):
            words[piece] += 1
            chars.update(piece)
    total = sum(words.values()) + sum(chars.values())
    score = {p: round(math.log(c / total), 9) for p, c in (chars + words).items()}
    order = lambda p: (-score[p], p)  # noqa: E731
    keep = sorted(chars, key=order)
    room = max(vocab_size - len(SPECIAL_TOKENS) - len(keep), 0)
    keep += sorted((w for w in words if len(w) > 1 and w not in chars), key=order)[:room]
    vocab = [(p, 0.0) for p in SPECIAL_TOKENS] + [(p, score[p]) for p in sorted(keep, key=order)]
    tok = Tokenizer(Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # as the trainer does: skipped when decoding
    _umt5_pipeline(tok)
    return _finish(tok)


def _check_args(corpus: list[str], vocab_size: int) -> None:
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if not corpus:
        raise ValueError("corpus is empty; give at least one caption to train the tokenizer on")


def _umt5_pipeline(tok) -> None:
    """NFKC + space folding, Metaspace("▁", prepend always) both ways (umT5's tokenizer.json)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")


def _finish(tok):
    """Append `</s>` to every sequence; the specials must hold ids 0, 1, 2."""
    from tokenizers import processors

    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    return tok
