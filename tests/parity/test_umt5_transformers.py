"""Our umT5 encoder vs transformers' UMT5EncoderModel on a tiny random model with the same weights."""

import pytest
import torch
from helpers_text import captions, ids_and_mask, random_hf_umt5
from tolerance import rel_err

transformers = pytest.importorskip("transformers")

from wanmoe.configs import T5Config  # noqa: E402
from wanmoe.loading.keymaps.t5 import hf_state_to_official_names  # noqa: E402
from wanmoe.text.encoder import TextEncoder  # noqa: E402
from wanmoe.text.tokenizer import load_tokenizer  # noqa: E402
from wanmoe.text.train_tokenizer import train_unigram_tokenizer  # noqa: E402
from wanmoe.loading.detect import t5_config_from_shapes  # noqa: E402
from wanmoe.text.umt5 import UMT5Encoder, relative_position_bucket  # noqa: E402

VOCAB, D, HEADS, DKV, FFN, LAYERS, LEN = 300, 64, 4, 16, 96, 2, 24


def _hf_model(seed: int = 0):
    return random_hf_umt5(VOCAB, D, HEADS, DKV, FFN, LAYERS, seed, std=0.1)


def _ours_from(hf_model) -> UMT5Encoder:
    state = hf_state_to_official_names(hf_model.state_dict())
    cfg = t5_config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, text_len=LEN)
    model = UMT5Encoder(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


def _ids_and_mask(valid: list[int]):
    return ids_and_mask(valid, VOCAB, LEN)


def test_config_inferred_from_hf_shapes():
    hf = _hf_model()
    cfg = t5_config_from_shapes({k: tuple(v.shape) for k, v in hf.state_dict().items()})
    assert cfg == T5Config(vocab_size=VOCAB, dim=D, dim_attn=HEADS * DKV, dim_ffn=FFN,
                           num_heads=HEADS, num_layers=LAYERS)


def test_forward_matches_transformers_fp32_with_padding():
    hf = _hf_model()
    ours = _ours_from(hf)
    ids, mask = _ids_and_mask([LEN, 9, 1])  # full, padded, EOS only
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = ours(ids, mask)
    err = rel_err(out, ref)
    print(f"fp32 max|ours-hf|/max|hf| = {err:.2e}")
    # fp32, same op order up to matmul blocking and the position of the mask add: ~1e-7 expected
    assert err < 1e-5


def test_relative_position_buckets_equal_transformers_at_512():
    attn = _hf_model().encoder.block[0].layer[0].SelfAttention
    pos = torch.arange(512)
    ref = attn._relative_position_bucket(pos[None, :] - pos[:, None])  # memory - query
    ours = relative_position_bucket(512, 512, num_buckets=32, max_distance=128)
    assert torch.equal(ours, ref)
    assert int(ours.min()) == 0 and int(ours.max()) == 31


def test_bf16_close_to_fp32_and_to_transformers_bf16():
    hf = _hf_model()
    ours32 = _ours_from(hf)
    ours16 = _ours_from(hf).to(torch.bfloat16)
    hf16 = _hf_model().to(torch.bfloat16)  # same seed -> same weights, all-bf16 (incl. wo)
    ids, mask = _ids_and_mask([LEN, 7])
    with torch.no_grad():
        ref32 = ours32(ids, mask)
        out16 = ours16(ids, mask)
        ref16 = hf16(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out16.dtype == torch.bfloat16
    vs32, vs_hf16 = rel_err(out16, ref32), rel_err(out16, ref16)
    print(f"bf16 vs fp32: {vs32:.2e}; bf16 vs transformers bf16: {vs_hf16:.2e}")
    # bf16 keeps 8 mantissa bits (rel. step 2^-8 = 3.9e-3) and rounds after every op of 2 blocks
    assert vs32 < 5e-2
    # all-bf16 transformers runs the same formulas (explicit tanh-GELU, fp32 norm mean, fp32-
    # accumulated softmax); only the order of the mask/position adds differs, which changes no
    # unmasked logit: allow one bf16 rounding step (2^-8), measured 0
    assert vs_hf16 <= 2.0**-8


def _tiny_tokenizer_dir(tmp_path):
    words = "a the red small quiet happy cat dog fox horse walks on beach road hill at sunset night".split()
    tok = train_unigram_tokenizer(captions(words, 300, 3, 12), vocab_size=VOCAB)
    folder = tmp_path / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_text_encoder_matches_transformers_pipeline(tmp_path):
    folder = _tiny_tokenizer_dir(tmp_path)
    hf = _hf_model()
    encoder = TextEncoder(load_tokenizer(folder, text_len=LEN), _ours_from(hf))
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", eos_token="</s>",
        unk_token="<unk>")
    prompts = ["a red cat walks on the beach at  sunset", "a quiet horse"]
    contexts = encoder.encode(prompts)
    for prompt, ctx in zip(prompts, contexts):
        batch = hf_tok([" ".join(prompt.split())], padding="max_length", truncation=True,
                       max_length=LEN, return_tensors="pt")
        with torch.no_grad():
            ref = hf(**batch).last_hidden_state[0]
        n = int(batch["attention_mask"].sum())
        assert ctx.shape == (n, D)
        assert rel_err(ctx, ref[:n]) < 1e-5  # fp32, see the forward test
