"""Each parallel scheme gives the single-process final latents (fp32, tiny A14B, gloo/CPU).

Tolerance 1e-5 relative: Ulysses changes GEMM/attention shapes (rows per call), which moves
fp32 results by ulps (measured 1.1e-6 relative at 27 tokens); CFG parallel and FSDP run the
same ops on the same shapes and are bit-identical (asserted exactly).
"""

from __future__ import annotations

import pytest

from helpers_parallel import COMMON, EVEN, ODD, free_port, load_latents, rel_diff, torchrun


def _parallel_latents(tiny_a14b, tmp_path, nproc, size, flags, launcher=None):
    out = tmp_path / "par"
    r = torchrun(nproc, ["generate", "a red ball rolls", "--ckpt-dir", str(tiny_a14b), *size,
                         *COMMON, *flags, "--out", f"{out}.mp4",
                         "--save-latents", f"{out}.safetensors"], launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1  # rank 0 alone writes
    return load_latents(f"{out}.safetensors")


@pytest.mark.slow
def test_ulysses_2_odd_token_count(tiny_a14b, reference, tmp_path):
    got = _parallel_latents(tiny_a14b, tmp_path, 2, ODD, ["--ulysses", "2"])
    ref = reference(tuple(ODD))
    assert got.shape == ref.shape
    assert rel_diff(got, ref) < 1e-5


@pytest.mark.slow
def test_cfg_parallel_2(tiny_a14b, reference, tmp_path):
    got = _parallel_latents(tiny_a14b, tmp_path, 2, ODD, ["--cfg-parallel"])
    assert bool((got == reference(tuple(ODD))).all())  # same ops, same shapes: bit-identical


@pytest.mark.slow
def test_fsdp_2(tiny_a14b, reference, tmp_path):
    got = _parallel_latents(tiny_a14b, tmp_path, 2, EVEN, ["--fsdp"])
    assert bool((got == reference(tuple(EVEN))).all())  # gathered weights are the loaded ones


@pytest.mark.slow
def test_ulysses_2_x_cfg_parallel_4_processes(tiny_a14b, reference, tmp_path):
    got = _parallel_latents(tiny_a14b, tmp_path, 4, ODD, ["--ulysses", "2", "--cfg-parallel"])
    assert rel_diff(got, reference(tuple(ODD))) < 1e-5


@pytest.mark.slow
def test_two_nodes_on_one_machine(tiny_a14b, reference, tmp_path):
    """Two torchrun launches (--nnodes 2, static rendezvous on 127.0.0.1), one process each."""
    import subprocess
    import sys

    from helpers_parallel import REPO, child_env

    port = free_port()
    procs = []
    for node in (0, 1):
        out = tmp_path / f"node{node}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "wanmoe", "generate", "a red ball rolls",
               "--ckpt-dir", str(tiny_a14b), *ODD, *COMMON, "--ulysses", "2",
               "--out", f"{out}.mp4", "--save-latents", f"{out}.safetensors"]
        procs.append(subprocess.Popen(cmd, env=child_env(), cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert (tmp_path / "node0.safetensors").is_file()
    assert not (tmp_path / "node1.safetensors").exists()  # global rank 1 writes nothing
    got = load_latents(tmp_path / "node0.safetensors")
    assert rel_diff(got, reference(tuple(ODD))) < 1e-5


@pytest.mark.slow
def test_ulysses_with_per_token_time_and_fsdp(tiny_a14b, reference, tmp_path):
    """Per-token e0 [B, L, 6, d] is sharded with the tokens; FSDP and Ulysses compose."""
    flags = ["--per-token-time", "--fsdp", "--ulysses", "2"]
    got = _parallel_latents(tiny_a14b, tmp_path, 2, ODD, flags)
    assert rel_diff(got, reference(tuple(ODD) + ("--per-token-time",))) < 1e-5
