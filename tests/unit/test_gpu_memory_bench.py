"""benchmarks/gpu_memory.py: its CPU smoke mode, predictions and verdict rule (the GPU run needs CUDA)."""

import torch
from helpers_dit import load_benchmark

from wanmoe.configs import T2V_A14B
from wanmoe.runtime.memory import CUDA_CONTEXT, MemoryRequest, predict

bench = load_benchmark("gpu_memory")


def test_smoke_computes_every_prediction_and_runs_the_meter():
    rows = bench.run_smoke()  # also builds bf16 and Q4_K_M tiny models and meters a forward
    assert len(rows) == len(bench.SCENARIOS) * len(bench.CARDS)
    r = next(r for r in rows if r["size"] == "720P" and r["weights"] == "bf16" and r["card"] == "24 GB")
    parts = predict(MemoryRequest(T2V_A14B, 1280, 720, 81, "bf16", "blocks", 2)).parts
    assert r["predicted_bytes"] == parts["dit_weights_device"] + parts["dit_activations"]
    assert r["predicted_fits"] and r["consistent"] is None  # not run
    # one whole Q4_K_M expert at 480P (10.0 GB + 2.6 GB activations + buffers) misses 12 GB
    whole = {r["card"]: r["predicted_fits"] for r in rows
             if r["what"] == "forward, 40 blocks" and r["size"] == "480P"}
    assert whole == {"12 GB": False, "16 GB": True, "24 GB": True}


def test_verdict_rule():
    gib = 2**30
    fits = 10 * gib
    assert bench.row("f", "480P", "bf16", "12 GB", 12 * gib, fits, int(fits * 1.05), "")["consistent"]
    assert not bench.row("f", "480P", "bf16", "12 GB", 12 * gib, fits, int(fits * 1.2), "")["consistent"]
    assert not bench.row("f", "480P", "bf16", "12 GB", 12 * gib, fits, None, "OOM")["consistent"]
    too_big = 12 * gib - CUDA_CONTEXT + 1
    assert bench.row("f", "480P", "bf16", "12 GB", 12 * gib, too_big, None, "OOM")["consistent"]


def test_gpu_mode_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_memory.py"])
    assert bench.main() == 2
    assert "--smoke" in capsys.readouterr().err
