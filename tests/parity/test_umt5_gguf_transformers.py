"""umT5 encoder GGUF files (llama.cpp T5 names) loaded by wanmoe vs transformers' UMT5EncoderModel.

A tiny random UMT5EncoderModel is exported the way llama.cpp does it: names from gguf-py's own
T5ENCODER tensor-name map, written with `gguf.GGUFWriter`, quantised with `gguf.quants` (Q8_0;
gguf-py cannot quantise Q4_K, so those blocks come from wanmoe's quantiser and are decoded for
the reference by `gguf.quants.dequantize`). The reference is transformers loaded with exactly
the values the file holds (dequantised by gguf-py), so every comparison is fp32-exact up to
summation order. Also `--text-weights fp8|int8` against the dequantised weights it made.
"""

import numpy as np
import pytest
import torch
from helpers_text import ids_and_mask, random_hf_umt5
from tolerance import rel_err

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402

from wanmoe.loading.components import load_text_encoder, text_encoder_bytes  # noqa: E402
from wanmoe.loading.detect import detect_file  # noqa: E402
from wanmoe.runtime.quant.linear import FP8Linear, GGUFLinear, Int8Linear  # noqa: E402
from wanmoe.runtime.quant.quantize import quantize_q4_k  # noqa: E402
from wanmoe.runtime.quant.text import GGUFEmbedding, text_installer  # noqa: E402
from wanmoe.runtime.text_placement import module_bytes  # noqa: E402
from wanmoe.text.encoder import TextEncoder  # noqa: E402

# rows of 256 so that Q4_K (256-element super-blocks) fits every linear, the embedding included
VOCAB, D, HEADS, DKV, FFN, LAYERS, LEN = 320, 256, 4, 64, 512, 2, 24
LINEARS = 7 * LAYERS  # q, k, v, o, gate, fc1, fc2


def _hf_model(seed: int = 0):
    return random_hf_umt5(VOCAB, D, HEADS, DKV, FFN, LAYERS, seed, std=0.05)


def _stored_type(gguf_name: str, shape, kind: str) -> str:
    """llama.cpp's choices: 1-D tensors (norms) F32, position tables never quantised."""
    if len(shape) == 1 or kind == "F32":
        return "F32"
    if "attn_rel_b" in gguf_name or kind == "F16":
        return "F16"
    return kind


def _encode(values: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(array to write, float32 values the file then holds)."""
    t = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return values, values
    if qtype == "F16":
        half = values.astype(np.float16)
        return half, half.astype(np.float32)
    if qtype == "Q4_K":  # gguf-py has no Q4_K quantiser: wanmoe's blocks, gguf-py's decoder
        blocks = quantize_q4_k(torch.from_numpy(values)).data.numpy()
    else:
        blocks = quants.quantize(values, t)
    return blocks, quants.dequantize(blocks, t).reshape(values.shape).astype(np.float32)


def _export(hf, path, kind: str, arch: str = "t5encoder") -> dict[str, torch.Tensor]:
    """Write `hf` as a llama.cpp-style umT5 encoder GGUF; returns the HF state it holds."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, LAYERS)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(512)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_key_length(DKV)
    writer.add_value_length(DKV)
    writer.add_relative_attn_buckets_count(32)
    writer.add_layer_norm_rms_eps(1e-6)
    held = {}
    for hf_name, tensor in hf.state_dict().items():
        if hf_name == "encoder.embed_tokens.weight":  # tied to shared.weight, stored once
            continue
        gname = name_map.get_name(hf_name, try_suffixes=(".weight",))
        assert gname is not None, hf_name
        values = tensor.float().numpy()
        qtype = _stored_type(gname, values.shape, kind)
        data, holds = _encode(values, qtype)
        writer.add_tensor(gname, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
        held[hf_name] = torch.from_numpy(np.ascontiguousarray(holds))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    held["encoder.embed_tokens.weight"] = held["shared.weight"]
    return held


def _reference(state: dict[str, torch.Tensor]):
    ref = _hf_model()
    ref.load_state_dict(state, strict=True)
    return ref


def _ids_and_mask(valid: list[int]):
    return ids_and_mask(valid, VOCAB, LEN)


def _outputs(ours, ref):
    ids, mask = _ids_and_mask([LEN, 9])
    with torch.no_grad():
        return ours(ids, mask), ref(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("kind", ["F32", "F16", "Q8_0", "Q4_K"])
def test_gguf_encoder_matches_transformers_on_the_values_it_holds(tmp_path, kind):
    path = tmp_path / f"umt5-tiny-{kind}.gguf"
    held = _export(_hf_model(), path, kind)
    det = detect_file(path)
    assert (det.component, det.naming, det.format) == ("text_encoder", "llama.cpp", "gguf")
    ours = load_text_encoder(path, dtype=torch.float32)
    n_gguf = sum(isinstance(m, GGUFLinear) for m in ours.modules())
    quantised = kind.startswith("Q")
    assert n_gguf == (LINEARS if quantised else 0)  # quantised linears stay quantised
    emb = ours.token_embedding
    if quantised:  # kept as blocks; a lookup decodes exactly the values the file holds
        assert isinstance(emb, GGUFEmbedding) and emb.qtype == kind
        assert torch.equal(emb(torch.arange(VOCAB)), held["shared.weight"])
    else:
        assert emb.weight.dtype == torch.float32 and torch.equal(emb.weight, held["shared.weight"])
    if quantised:  # the blocks kept: bytes as stored, not as float32
        float32_bytes = sum(t.numel() * 4 for k, t in held.items() if k != "encoder.embed_tokens.weight")
        assert module_bytes(ours) < (0.3 if kind == "Q8_0" else 0.2) * float32_bytes
    out, ref = _outputs(ours, _reference(held))
    err = rel_err(out, ref)
    print(f"{kind}: max|ours-hf|/max|hf| = {err:.2e}")
    assert err < 1e-5  # same fp32 values, same formulas: summation order only (~1e-7)


def test_full_t5_architecture_name_loads_too(tmp_path):
    # some umT5 encoder GGUFs (e.g. chatpig/umt5xxl-encoder-gguf) say general.architecture "t5"
    path = tmp_path / "t5-arch.gguf"
    held = _export(_hf_model(), path, "Q8_0", arch="t5")
    out, ref = _outputs(load_text_encoder(path, dtype=torch.float32), _reference(held))
    assert rel_err(out, ref) < 1e-5


def test_byte_estimate_from_headers_equals_the_loaded_model(tmp_path):
    path = tmp_path / "q8.gguf"
    _export(_hf_model(), path, "Q8_0")
    for weights in (None, "int8"):
        model = load_text_encoder(path, dtype=torch.bfloat16, weights=weights)
        assert text_encoder_bytes(path, torch.bfloat16, weights) == module_bytes(model)


@pytest.mark.parametrize("mode,cls,step", [("int8", Int8Linear, 1 / 127), ("fp8", FP8Linear, 2.0 ** -3)])
def test_text_weights_quantise_each_linear_at_load(tmp_path, mode, cls, step):
    path = tmp_path / "f32.gguf"
    held = _export(_hf_model(), path, "F32")
    ours = load_text_encoder(path, dtype=torch.float32, weights=mode)
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, cls)}
    assert len(layers) == LINEARS
    # each weight is the float one quantised per output channel: |w - deq| <= step x row absmax
    w = held["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    deq = layers["blocks.1.ffn.fc2"].dequantized(torch.float32)
    bound = step * w.abs().amax(dim=1, keepdim=True)
    assert ((deq - w).abs() <= bound + 1e-12).all()
    if mode == "int8":  # independent recomputation of the int8 codes
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        assert torch.equal(layers["blocks.1.ffn.fc2"].weight, torch.round(w / scale).clamp(-127, 127).to(torch.int8))
    # forward = transformers on the dequantised weights (the exact path)
    from wanmoe.loading.keymaps.t5 import official_to_hf

    exact = dict(held)
    for name, layer in layers.items():
        exact[official_to_hf(name + ".weight")] = layer.dequantized(torch.float32)
    out, ref = _outputs(ours, _reference(exact))
    assert rel_err(out, ref) < 1e-5
    # and close to the float encoder: the quantisation error only
    out_f, ref_f = _outputs(ours, _reference(held))
    err = ((out_f - ref_f).norm() / ref_f.norm()).item()
    print(f"--text-weights {mode} vs float: {err:.2e} (relative L2)")
    # the random tiny encoder amplifies weight noise (peaky unscaled attention): measured 5.5 %
    # (int8), 17 % (fp8, 3 mantissa bits); Q8_0 of the same weights gives 4.9 %. Garbage gives ~1.
    assert 0 < err < (0.1 if mode == "int8" else 0.3)


def test_bf16_upcast_path_of_quantised_linears_is_the_bf16_gemm(tmp_path, monkeypatch):
    # on CPUs without bf16 units the encoder computes bf16 matmuls as fp32 GEMMs of the bf16
    # values; GGUF linears take that path with the bf16 weight their own forward would use
    path = tmp_path / "q8.gguf"
    held = _export(_hf_model(), path, "Q8_0")
    model = load_text_encoder(path, dtype=torch.bfloat16)
    ids, mask = _ids_and_mask([LEN, 9])
    with torch.no_grad():
        model.set_matmul_upcast(False)
        plain = model(ids, mask)
        model.set_matmul_upcast(True)

        def refuse(self, x):
            raise AssertionError("the upcast path called the layer's own bf16 forward")

        monkeypatch.setattr(GGUFLinear, "forward", refuse)
        up = model(ids, mask)
        ref = _reference(held)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert up.dtype == torch.bfloat16

    def l2(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    # two bf16 GEMMs of the same bf16 values: accumulation order only (measured 0.1 %), and both
    # as far from fp32 as bf16 goes on this (noise-amplifying) random encoder (measured 3.4 %)
    assert l2(up, plain) < 2e-2
    assert l2(up, ref) < 5e-2 and l2(plain, ref) < 5e-2


def test_kept_embedding_equals_the_dequantised_once_table(tmp_path):
    # the two ways to hold a quantised token embedding give the same encoder output, bit for bit
    from wanmoe.loading.components import _opened
    from wanmoe.loading.stream import empty_weights, stream_load
    from wanmoe.text.umt5 import UMT5Encoder

    path = tmp_path / "q4k.gguf"
    _export(_hf_model(), path, "Q4_K")
    kept = load_text_encoder(path, dtype=torch.bfloat16)
    with _opened(path, "text_encoder") as (src, key_map, det):
        with empty_weights():
            dense = UMT5Encoder(det.t5_config())
        stream_load(dense, src, dtype=torch.bfloat16, key_map=key_map,
                    install_quantized=text_installer(torch.bfloat16, keep_embedding=False))
    assert isinstance(kept.token_embedding, GGUFEmbedding)
    assert type(dense.token_embedding) is torch.nn.Embedding and dense.token_embedding.weight.dtype == torch.bfloat16
    ids, mask = _ids_and_mask([LEN, 9])
    with torch.no_grad():
        assert torch.equal(kept.token_embedding(ids), dense.token_embedding(ids))
        assert torch.equal(kept(ids, mask), dense(ids, mask))
