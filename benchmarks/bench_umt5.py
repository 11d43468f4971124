"""umT5 encode time for one 512-token prompt in bf16 (the official T5 dtype), ours vs transformers.

CPU: building all 24 layers at real width needs 11.4 GB and a long random init, so the script
times 2 full-width layers (4096 wide, 64 heads, ffn 10240) once and extrapolates per layer to 24
layers (printed as an estimate; `--fp32-reference` adds the same in fp32). The vocabulary is cut to
1024 rows: the embedding lookup is a gather whose cost does not depend on the vocabulary size.
Ours vs transformers' UMT5EncoderModel runs at a reduced width in the same process (ratio), with
the plain bf16 kernels and with `set_matmul_upcast(True)` (the CPU fast path, see umt5.py).
CUDA: the full model (random bf16 weights created on the GPU) for both implementations, with
achieved TFLOP/s and peak memory. `--smoke` runs that GPU code path on the CPU with a tiny config.

FLOPs per forward (B=1, multiply-add = 2 FLOPs; L tokens, d width, a = dim_attn, f = ffn):
  layers * (8 L d a [q, k, v, o] + 4 L^2 a [QK^T, PV] + 6 L d f [gate, fc1, fc2])

    PYTHONPATH=. python benchmarks/bench_umt5.py [--repeats 3] [--threads N] [--small-dim 512]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import torch

from wanmoe.configs import UMT5_XXL, T5Config
from wanmoe.loading.keymaps.t5 import HF_TIED, official_to_hf
from wanmoe.text.encoder import cpu_lacks_bf16
from wanmoe.text.umt5 import UMT5Encoder


def random_encoder(cfg: T5Config, device: str, dtype: torch.dtype = torch.bfloat16) -> UMT5Encoder:
    """Meta build -> empty storage in `dtype` on `device` -> cheap random fill (no fp32 copy)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg).to(dtype)
    model = model.to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02 if p.ndim == 2 and p.shape[1] != cfg.num_heads else 1.0, generator=gen)
    return model


def transformers_twin(model: UMT5Encoder):
    """transformers UMT5EncoderModel sharing our tensors (no copy), or None if not installed."""
    try:
        import transformers
    except ImportError:
        return None
    cfg = model.cfg
    hf_cfg = transformers.UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=cfg.num_buckets, dropout_rate=0.0,
        relative_attention_max_distance=cfg.max_distance, layer_norm_epsilon=cfg.eps)
    with torch.device("meta"):
        hf = transformers.UMT5EncoderModel(hf_cfg)
    state = {official_to_hf(k): v for k, v in model.state_dict().items()}
    for alias, target in HF_TIED.items():
        state[alias] = state[target]
    hf.load_state_dict(state, assign=True, strict=True)
    return hf.eval()


def flops(cfg: T5Config, length: int) -> float:
    per_layer = (8 * length * cfg.dim * cfg.dim_attn + 4 * length**2 * cfg.dim_attn
                 + 6 * length * cfg.dim * cfg.dim_ffn)
    return cfg.num_layers * per_layer


def time_forward(fn, ids, mask, repeats: int, warmup: bool = True) -> float:
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    with torch.no_grad():
        if warmup:
            fn(ids, mask)
            sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(ids, mask)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prompt(cfg: T5Config, device: str, real: int = 512):
    """A 512-token prompt (all mask 1, the worst case), batch 1 like the official call."""
    ids = torch.randint(3, cfg.vocab_size, (1, cfg.text_len), device=device)
    mask = torch.zeros(1, cfg.text_len, dtype=torch.int64, device=device)
    mask[:, :real] = 1
    return ids, mask


def compare(model: UMT5Encoder, device: str, repeats: int, label: str) -> None:
    ids, mask = prompt(model.cfg, device)
    ours = time_forward(lambda i, m: model(i, m), ids, mask, repeats)
    rate = flops(model.cfg, ids.shape[1]) / ours / 1e9
    print(f"{label}: ours {ours * 1e3:.1f} ms ({rate:.1f} GFLOP/s achieved)")
    hf = transformers_twin(model)
    if hf is None:
        print("transformers not installed: no baseline")
        return
    base = time_forward(lambda i, m: hf(input_ids=i, attention_mask=m).last_hidden_state, ids, mask, repeats)
    # transformers runs its default attention backend (sdpa), whose bf16 rounding differs slightly
    with torch.no_grad():
        a, b = model(ids, mask).float(), hf(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    diff = ((a - b).abs().max() / b.abs().max()).item()
    print(f"{label}: transformers {base * 1e3:.1f} ms, ours {ours * 1e3:.1f} ms, "
          f"speed-up {base / ours:.2f}x, max|ours-hf|/max|hf| {diff:.2e}")


def run_cpu(args) -> None:
    """Full width, 2 layers; each forward is minutes on CPUs without native bf16 matmuls, so it
    runs once with no warm-up (one-time costs are negligible at that scale)."""
    wide = replace(UMT5_XXL, vocab_size=1024, num_layers=2)
    layers = UMT5_XXL.num_layers
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 matmul: "
          f"{not cpu_lacks_bf16()}")
    variants = [("bf16 reference kernels", torch.bfloat16, False),
                ("bf16 matmul upcast", torch.bfloat16, True)]
    if args.fp32_reference:
        variants.append(("fp32 (not the official dtype)", torch.float32, False))
    times = {}
    for label, dtype, upcast in variants:
        model = random_encoder(wide, "cpu", dtype)
        model.set_matmul_upcast(upcast)
        ids, mask = prompt(model.cfg, "cpu")
        times[label] = t = time_forward(lambda i, m, mm=model: mm(i, m), ids, mask, 1, warmup=False)
        del model
        print(f"full width (4096/64 heads/ffn 10240), 2 layers, {label}, L=512: {t:.1f} s "
              f"({flops(wide, 512) / t / 1e9:.1f} GFLOP/s) -> per layer {t / 2:.1f} s, "
              f"24 layers ~{t / 2 * layers:.0f} s (EXTRAPOLATED from 2 measured layers)")
    ratio = times[variants[0][0]] / times[variants[1][0]]
    print(f"matmul upcast speed-up at full width: {ratio:.2f}x")
    small = T5Config(vocab_size=1024, dim=args.small_dim, dim_attn=args.small_dim,
                     dim_ffn=args.small_dim * 5 // 2, num_heads=args.small_dim // 64, num_layers=2)
    model = random_encoder(small, "cpu")
    label = f"reduced size (dim {small.dim}, 2 layers, bf16, L=512)"
    compare(model, "cpu", args.repeats, label + ", reference kernels")
    model.set_matmul_upcast(True)
    compare(model, "cpu", args.repeats, label + ", matmul upcast")


def run_full(args, device: str) -> None:
    """The whole encoder; on CPU (`--smoke`) a tiny config keeps the code path exercised."""
    cfg = UMT5_XXL if device == "cuda" else T5Config(
        vocab_size=512, dim=128, dim_attn=128, dim_ffn=320, num_heads=2, num_layers=2)
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    model = random_encoder(cfg, device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{cfg.num_layers}-layer umT5 (dim {cfg.dim}) on {device}, bf16: "
          f"{weights / 2**30:.2f} GiB of weights")
    compare(model, device, args.repeats, f"full encoder ({cfg.num_layers} layers, bf16, L=512)")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
              f"(both implementations share the weights)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--small-dim", type=int, default=512)
    parser.add_argument("--cpu", action="store_true", help="CPU numbers even when CUDA is available")
    parser.add_argument("--fp32-reference", action="store_true",
                        help="CPU: also time the 2 full-width layers in fp32 (not the official dtype)")
    parser.add_argument("--smoke", action="store_true", help="GPU code path on CPU, tiny config")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads")
    if args.smoke:
        run_full(args, "cpu")
    elif torch.cuda.is_available() and not args.cpu:
        run_full(args, "cuda")
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
