"""load_tokenizer / PromptTokenizer / train_unigram_tokenizer against transformers and sentencepiece."""

import importlib.util
import json

import pytest
import torch
from helpers_text import captions

from wanmoe.errors import CheckpointError
from wanmoe.text import tokenizer as tokmod
from wanmoe.text.clean import clean_prompt
from wanmoe.text.tokenizer import load_tokenizer
from wanmoe.text.train_tokenizer import train_unigram_tokenizer

WORDS = ("a an the cat dog fox horse bird man woman child car train boat tree flower river "
         "mountain city street beach forest field house red blue green yellow black white small "
         "big old young happy quiet walks runs sleeps jumps flies swims sits looks plays on in "
         "at under over near through with of and sunset night dawn morning rain snow sun light "
         "camera slowly close-up wide shot").split()
CORPUS = captions(WORDS, 400, 4, 14, end=".")
PROMPTS = [
    "a red fox runs on the hill at dawn.",
    "  a quiet   cat\n sleeps &amp;amp; a dog walks, zebra-42!  ",
    "cafÃ© on the road",
    "",
    " ".join(["a happy horse walks on the beach at sunset."] * 12),  # longer than text_len
]
TEXT_LEN = 24


@pytest.fixture(scope="module")
def trained():
    return train_unigram_tokenizer(CORPUS, vocab_size=120)


@pytest.fixture()
def umt5_folder(tmp_path, trained):
    folder = tmp_path / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    trained.save(str(folder / "tokenizer.json"))
    return folder


def test_trained_tokenizer_has_umt5_conventions(trained):
    assert [trained.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert type(trained.model).__name__ == "Unigram"
    assert type(trained.pre_tokenizer).__name__ == "Metaspace"
    enc = trained.encode("a cat walks")
    assert enc.ids[-1] == 1 and enc.tokens[0].startswith("▁")  # </s> appended, ▁ prefix
    assert trained.get_vocab_size() > 80  # every corpus word + the characters, pruned
    assert trained.encode("a red fox", add_special_tokens=False).tokens == ["▁a", "▁red", "▁fox"]


@pytest.mark.parametrize("as_file", [False, True])
def test_matches_transformers_padding_truncation(umt5_folder, as_file):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(umt5_folder / "tokenizer.json" if as_file else umt5_folder, TEXT_LEN)
    ids, mask = tok(PROMPTS)
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (len(PROMPTS), TEXT_LEN)
    cleaned = [clean_prompt(p) for p in PROMPTS]  # the official wrapper cleans before calling HF
    for ref_tok in (
        transformers.PreTrainedTokenizerFast(tokenizer_file=str(umt5_folder / "tokenizer.json"),
                                             pad_token="<pad>", eos_token="</s>", unk_token="<unk>"),
        transformers.T5TokenizerFast(tokenizer_file=str(umt5_folder / "tokenizer.json"), extra_ids=0),
    ):
        ref = ref_tok(cleaned, padding="max_length", truncation=True, max_length=TEXT_LEN,
                      add_special_tokens=True, return_tensors="pt")
        assert torch.equal(ids, ref["input_ids"]), type(ref_tok).__name__
        assert torch.equal(mask, ref["attention_mask"]), type(ref_tok).__name__


def test_eos_truncation_and_padding_rules(umt5_folder, trained):
    tok = load_tokenizer(umt5_folder, TEXT_LEN)
    ids, mask = tok(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        plain = trained.encode(clean_prompt(prompt), add_special_tokens=False).ids
        n = min(len(plain), TEXT_LEN - 1) + 1  # long prompts keep text_len - 1 tokens + EOS
        assert int(mask[row].sum()) == n and bool(mask[row, :n].all())
        assert ids[row, :n - 1].tolist() == plain[: n - 1]
        assert int(ids[row, n - 1]) == 1  # </s>
        assert bool((ids[row, n:] == 0).all())  # <pad>
    assert int(mask[-1].sum()) == TEXT_LEN  # the long prompt was cut
    assert tok(["x"])[0].shape == (1, TEXT_LEN) and tok(["x"], text_len=7)[0].shape == (1, 7)


def test_eos_appended_without_post_processor(umt5_folder, tmp_path):
    data = json.loads((umt5_folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = None
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data), encoding="utf-8")
    assert load_tokenizer(bare, TEXT_LEN).tokenizer.encode("a cat").ids[-1] != 1  # really bare
    a, b = load_tokenizer(bare, TEXT_LEN)(PROMPTS), load_tokenizer(umt5_folder, TEXT_LEN)(PROMPTS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bos_adding_tokenizer_is_rejected(trained, tmp_path):
    from tokenizers import processors

    trained_copy = type(trained).from_str(trained.to_str())
    trained_copy.post_processor = processors.TemplateProcessing(
        single="<unk> $A </s>", special_tokens=[("<unk>", 2), ("</s>", 1)])
    path = tmp_path / "bos.json"
    trained_copy.save(str(path))
    with pytest.raises(CheckpointError, match="no BOS"):
        load_tokenizer(path)


def test_missing_or_empty_tokenizer_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.json.*spiece.model") as err:
        load_tokenizer(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "config.json" in str(err.value)
    (tmp_path / "ckpt" / "google" / "umt5-xxl").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="did you mean .*umt5-xxl"):
        load_tokenizer(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json")


def _spiece_folder(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is needed to write a spiece.model")
    folder = tmp_path / "spm"
    folder.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return folder, spm


def test_spiece_only_without_converter_deps_explains_what_to_do(tmp_path, monkeypatch):
    folder, _ = _spiece_folder(tmp_path)
    monkeypatch.setattr(tokmod, "_importable", lambda mod: mod != "google.protobuf")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(folder)
    msg = str(err.value)
    assert str(folder) in msg and "pip install protobuf" in msg and "tokenizer.json" in msg


def _have(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not (_have("transformers") and _have("google.protobuf")),
                    reason="converting spiece.model needs transformers and protobuf")
def test_spiece_only_folder_is_converted(tmp_path):
    folder, spm = _spiece_folder(tmp_path)
    with pytest.warns(UserWarning, match="tokenizer.json"):
        tok = load_tokenizer(folder, TEXT_LEN)
    ref = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    ids, mask = tok(PROMPTS[:3])
    for row, prompt in enumerate(PROMPTS[:3]):
        expect = ref.encode(clean_prompt(prompt))[: TEXT_LEN - 1] + [1]
        assert ids[row, : len(expect)].tolist() == expect
        assert int(mask[row].sum()) == len(expect)
    tok.save(folder / "tokenizer.json")  # the step the warning recommends
    again = load_tokenizer(folder, TEXT_LEN)(PROMPTS[:3])
    assert torch.equal(again[0], ids)
