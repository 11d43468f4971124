"""TextEncoder: one batch-1 call per prompt, output trimmed to the mask-1 tokens (incl. EOS)."""

import torch
from helpers_text import captions

from wanmoe.configs import T5Config
from wanmoe.text.encoder import TextEncoder, cpu_lacks_bf16
from wanmoe.text.tokenizer import PromptTokenizer
from wanmoe.text.train_tokenizer import train_unigram_tokenizer
from wanmoe.text.umt5 import UMT5Encoder

WORDS = "a the red small cat dog fox walks runs on beach road at sunset night".split()


def _setup(dtype=torch.float32, text_len=20):
    trained = train_unigram_tokenizer(captions(WORDS, 200, 3, 10), vocab_size=80)
    tok = PromptTokenizer(trained, text_len=text_len)
    cfg = T5Config(vocab_size=tok.vocab_size, dim=32, dim_attn=32, dim_ffn=48, num_heads=4,
                   num_layers=2, text_len=text_len)
    torch.manual_seed(0)
    return tok, UMT5Encoder(cfg).eval().to(dtype)


def test_outputs_are_trimmed_to_real_length_with_eos():
    tok, model = _setup()
    enc = TextEncoder(tok, model)
    prompts = ["a red cat walks on the beach", "dog", "", " ".join(["a fox runs"] * 20)]
    contexts = enc.encode(prompts)
    assert len(contexts) == len(prompts)
    for prompt, ctx in zip(prompts, contexts):
        ids, mask = tok([prompt], text_len=20)
        n = int(mask.sum())
        assert ctx.shape == (n, 32)
        assert int(ids[0, n - 1]) == 1  # the trimmed part ends with the EOS position
        with torch.no_grad():
            assert torch.equal(ctx, model(ids, mask)[0, :n])  # batch-1 full-length call
    assert contexts[2].shape[0] == 1  # empty prompt: EOS only
    assert contexts[3].shape[0] == 20  # truncated to text_len


def test_results_do_not_depend_on_batch_companions():
    tok, model = _setup()
    enc = TextEncoder(tok, model)
    alone = enc.encode(["a small dog runs"])[0]
    together = enc.encode(["a red fox walks on the road at night", "a small dog runs"])[1]
    assert torch.equal(alone, together)
    assert torch.equal(enc.encode("a small dog runs")[0], alone)  # a bare string is one prompt


def test_bf16_model_gives_bf16_contexts_on_model_device():
    tok, model = _setup(torch.bfloat16)
    ctx = TextEncoder(tok, model).encode(["a cat"])[0]
    assert ctx.dtype == torch.bfloat16 and ctx.device == model.token_embedding.weight.device


def test_matmul_upcast_policy():
    tok, model = _setup(torch.bfloat16)
    auto = TextEncoder(tok, model)
    assert auto.matmul_upcast == cpu_lacks_bf16()  # CPU bf16 model: on only without bf16 units
    assert model.blocks[0].attn.upcast == auto.matmul_upcast
    assert TextEncoder(tok, model, matmul_upcast=False).model.blocks[0].ffn.upcast is False
    tok32, model32 = _setup(torch.float32)
    assert TextEncoder(tok32, model32).matmul_upcast is False  # fp32 models never upcast
