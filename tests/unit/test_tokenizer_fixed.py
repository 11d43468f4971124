"""fixed_unigram_tokenizer: the reproducible tokenizer of the tiny test checkpoints."""

import subprocess
import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from wanmoe.testing.tiny import CORPUS
from wanmoe.text.train_tokenizer import fixed_unigram_tokenizer, train_unigram_tokenizer

REPO = Path(__file__).resolve().parents[2]
_DUMP = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from wanmoe.testing.tiny import CORPUS; "
         "from wanmoe.text.train_tokenizer import fixed_unigram_tokenizer as f; "
         "print(f(list(CORPUS), 256).to_str())")


def test_same_file_in_every_process():
    # The trainer's output changes between processes (hash-map order); the fixed builder must not.
    runs = {subprocess.run([sys.executable, "-c", _DUMP, str(REPO)], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(runs) == 1


def test_same_conventions_as_the_trained_tokenizer():
    fixed = fixed_unigram_tokenizer(list(CORPUS), 256)
    trained = train_unigram_tokenizer(list(CORPUS), 256)
    for name in ("<pad>", "</s>", "<unk>"):
        assert fixed.token_to_id(name) == trained.token_to_id(name)
    text = "a  red ball ROLLS to the right, 画面"
    assert fixed.normalizer.normalize_str(text) == trained.normalizer.normalize_str(text)
    enc = fixed.encode(text)
    assert enc.ids[-1] == fixed.token_to_id("</s>")
    assert fixed.decode(enc.ids) == trained.decode(trained.encode(text).ids)  # both lossless here


def test_vocab_size_caps_words_and_keeps_every_character():
    small = fixed_unigram_tokenizer(list(CORPUS), 60)
    chars = {c for text in CORPUS for c in small.normalizer.normalize_str(text).replace(" ", "▁")}
    vocab = small.get_vocab()
    assert chars <= set(vocab)  # no <unk> for any corpus text
    assert len(vocab) <= max(60, 3 + len(chars) + 1)
    hf = PreTrainedTokenizerFast(tokenizer_object=small)
    assert hf.convert_ids_to_tokens(small.encode(CORPUS[0]).ids)[-1] == "</s>"
