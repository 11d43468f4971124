"""Train a small Unigram tokenizer with the umT5 conventions (tests and the demo model)."""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in umT5


def train_unigram_tokenizer(corpus: list[str], vocab_size: int):
    """Unigram model + Metaspace pre-tokenizer; `<pad>`=0, `</s>`=1, `<unk>`=2; appends `</s>`.

    The pipeline mirrors the umT5 `tokenizer.json`: an NFKC normaliser that also folds runs of
    spaces (SentencePiece's `nmt_nfkc` + extra-whitespace removal), Metaspace("▁", prepend
    always) pre-tokenisation and decoding, and a `$A </s>` template post-processor. Training is
    deterministic for a given corpus. Returns a `tokenizers.Tokenizer`.
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
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    for i, name in enumerate(SPECIAL_TOKENS):  # the trainer places specials first, in order
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    return tok
