"""Where the umT5 encoder waits and encodes: the VRAM-short decisions, with the free memory given."""

import pytest
import torch
from torch import nn

from wanmoe.runtime.text_placement import ENCODE_MARGIN, encoder_on, fits_on, module_bytes, text_home

CUDA = torch.device("cuda:0")


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 8))  # 128 + 128 + 8 floats


def test_module_bytes_counts_parameters_and_buffers_once():
    m = _model()
    m.register_buffer("q", torch.zeros(10, dtype=torch.int8))
    m.tied = m[0]  # the same parameters reachable twice: counted once
    assert module_bytes(m) == (128 + 128 + 8) * 4 + 10


def test_fits_needs_weights_plus_the_encode_margin():
    assert fits_on(CUDA, 100, free_bytes=100 + ENCODE_MARGIN)
    assert not fits_on(CUDA, 100, free_bytes=99 + ENCODE_MARGIN)
    assert fits_on(torch.device("cpu"), 10**15, free_bytes=0)  # the host is never refused


def test_text_home_falls_back_to_the_cpu_when_the_gpu_is_full():
    said = []
    assert text_home(CUDA, 2**30, free_bytes=4 * 2**30, notify=said.append) == CUDA
    assert said == []
    assert text_home(CUDA, 11 * 2**30, free_bytes=4 * 2**30, notify=said.append) == torch.device("cpu")
    assert len(said) == 1 and "11.0 GiB" in said[0] and "CPU" in said[0]


def test_encoder_on_encodes_on_the_cpu_when_the_gpu_has_no_room():
    m = _model()
    said = []
    with encoder_on(m, CUDA, free_bytes=0, notify=said.append) as got:
        assert got is m and m[0].weight.device.type == "cpu"  # never moved (no CUDA call made)
    assert m[0].weight.device.type == "cpu" and len(said) == 1 and "encoding on the CPU" in said[0]


def test_encoder_on_leaves_a_cpu_target_alone():
    m = _model()
    with encoder_on(m, torch.device("cpu"), notify=lambda s: (_ for _ in ()).throw(AssertionError(s))) as got:
        assert got is m


def test_runtime_config_takes_text_weights_and_refuses_others():
    from wanmoe.errors import InputError
    from wanmoe.request import runtime_config

    assert runtime_config("cpu", text_weights="int8").text_weights == "int8"
    assert runtime_config("cpu").text_weights is None
    with pytest.raises(InputError, match="text weights 'int4' is not one of fp8, int8"):
        runtime_config("cpu", text_weights="int4")


@pytest.mark.gpu
def test_encoder_on_moves_a_host_encoder_to_the_gpu_and_back():
    # real free memory (mem_get_info) on a GPU: a small encoder fits, runs there, then leaves
    m = _model()
    before = torch.cuda.memory_allocated()
    with encoder_on(m, CUDA) as got:
        assert got[0].weight.device.type == "cuda"
        y = got(torch.ones(2, 8, device="cuda"))
    assert m[0].weight.device.type == "cpu" and y.device.type == "cuda"
    del y
    assert torch.cuda.memory_allocated() == before  # the weights went back: the GPU is free again


def test_automatic_upcast_follows_the_encoder_to_where_it_encodes(monkeypatch):
    # an encoder waiting on a CPU without bf16 units upcasts there; moved (here: faked) to a
    # device with bf16 kernels for the encode, it runs them instead
    import wanmoe.text.encoder as enc_mod
    from wanmoe.configs import T5Config
    from wanmoe.text.umt5 import UMT5Encoder

    monkeypatch.setattr(enc_mod, "cpu_lacks_bf16", lambda: True)
    model = UMT5Encoder(T5Config(vocab_size=16, dim=8, dim_attn=8, dim_ffn=8, num_heads=2, num_layers=1))
    model = model.to(torch.bfloat16)

    class Tok:
        text_len = 4

        def __call__(self, prompts, text_len):
            return torch.ones(1, text_len, dtype=torch.long), torch.ones(1, text_len, dtype=torch.long)

    enc = enc_mod.TextEncoder(Tok(), model)
    assert enc.matmul_upcast is True and model.blocks[0].attn.upcast is True
    monkeypatch.setattr(enc_mod.TextEncoder, "_upcast_here", lambda self: False)  # "on the GPU now"
    enc.encode("x")
    assert enc.matmul_upcast is False and model.blocks[0].attn.upcast is False
