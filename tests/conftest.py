"""Session set-up shared by all tests, and the guard that keeps every test independent of order.

Each test starts from the same process state and must leave it as it found it:
- `_seed_and_guard_process_state` (autouse) seeds the global RNGs per test and fails, at teardown,
  a test that changed process-wide state (thread counts, default dtype, grad mode, backend flags,
  the attention backend, environment variables, working directory) without restoring it. Change
  such state with a fixture or context manager that restores it (`monkeypatch`,
  `torch.no_grad()`, `wanmoe.runtime.attention.attention_backend(...)`, ...).
- Tests may run in random order (`scripts/test_random.sh`, docs/testing.md).
"""

import os
import random
import zlib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def pytest_configure(config):
    # The session's one thread setting: two OpenMP threads at most (the CI box has two cores).
    # Tests that need fewer change it with a restoring fixture (helpers_vae.one_thread).
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    """Tensor manifests of the released checkpoints (names, shapes, dtypes), kept in the repository."""
    return MANIFESTS


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# per-test seeding and the process-state guard


def _seed_global_rngs(key: str) -> None:
    """Seed torch's, Python's and numpy's global RNGs from `key` (a test or module id)."""
    seed = zlib.crc32(key.encode())
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed)


def _attention():
    # the process-wide attention backend, while wanmoe still has one (getattr: it may go away)
    from wanmoe.runtime import attention

    get = getattr(attention, "get_attention_backend", None)
    return (get(), attention.set_attention_backend) if get is not None else (None, None)


def _attrs(obj, names: tuple[str, ...]):
    """(read, write) of several attributes of `obj` as one tuple."""
    def write(values):
        for name, v in zip(names, values):
            setattr(obj, name, v)
    return lambda: tuple(getattr(obj, n) for n in names), write


def _switches(*pairs):
    """(read, write) of several (is_enabled, enable) function pairs as one tuple."""
    def write(values):
        for (_, enable), v in zip(pairs, values):
            enable(v)
    return lambda: tuple(read() for read, _ in pairs), write


# set by libraries on their first (lazy) import, not by a test: torch._dynamo's import records its
# default inductor cache folder in TORCHINDUCTOR_CACHE_DIR
_ENV_SET_ON_IMPORT = frozenset({"TORCHINDUCTOR_CACHE_DIR"})


def _environ() -> dict:
    return {k: v for k, v in os.environ.items()
            if k != "PYTEST_CURRENT_TEST" and k not in _ENV_SET_ON_IMPORT}


def _set_environ(env: dict) -> None:
    for k in set(_environ()) - set(env):
        del os.environ[k]
    os.environ.update(env)


_cuda = torch.backends.cuda
# name -> (read, write); write None: cannot be put back in-process (the test still fails)
_STATE = {
    "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
    "torch.get_num_interop_threads()": (torch.get_num_interop_threads, None),  # settable once
    "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
    "torch.get_default_device()": (torch.get_default_device, torch.set_default_device),
    "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
    "torch.is_inference_mode_enabled()": (torch.is_inference_mode_enabled, None),
    "torch.is_anomaly_enabled()": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "deterministic algorithms (enabled, warn_only)": (
        lambda: (torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision,
                                             torch.set_float32_matmul_precision),
    "torch.backends.cudnn (enabled, benchmark, deterministic, allow_tf32)": _attrs(
        torch.backends.cudnn, ("enabled", "benchmark", "deterministic", "allow_tf32")),
    "torch.backends.cuda.matmul (allow_tf32, fp16 / bf16 reduced-precision reduction)": _attrs(
        _cuda.matmul, ("allow_tf32", "allow_fp16_reduced_precision_reduction",
                       "allow_bf16_reduced_precision_reduction")),
    "torch.backends.cuda SDPA kernels (flash, mem_efficient, math, cudnn)": _switches(
        (_cuda.flash_sdp_enabled, _cuda.enable_flash_sdp),
        (_cuda.mem_efficient_sdp_enabled, _cuda.enable_mem_efficient_sdp),
        (_cuda.math_sdp_enabled, _cuda.enable_math_sdp),
        (_cuda.cudnn_sdp_enabled, _cuda.enable_cudnn_sdp)),
    "torch.backends.mkldnn (enabled, deterministic)": _attrs(torch.backends.mkldnn,
                                                             ("enabled", "deterministic")),
    "wanmoe attention backend": (lambda: _attention()[0],
                                 lambda name: _attention()[1](name)),
    "os.environ": (_environ, _set_environ),
    "os.getcwd()": (os.getcwd, os.chdir),
}


def _snapshot() -> dict:
    return {name: read() for name, (read, _) in _STATE.items()}


def _restore(before: dict, changed: list[str]) -> None:
    for name in changed:
        write = _STATE[name][1]
        if write is not None:
            write(before[name])


def _describe(name: str, old, new) -> str:
    if name == "os.environ":
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return f"os.environ[{', '.join(keys)}]"
    return f"{name}: {old!r} -> {new!r}"


@pytest.fixture(scope="module", autouse=True)
def _seed_module(request):
    """Module-scoped fixtures that draw from the global RNGs see the same numbers in any order."""
    _seed_global_rngs(request.node.nodeid)


@pytest.fixture(autouse=True)
def _seed_and_guard_process_state(request):
    """Seed the global RNGs for this test; fail it if it leaves process-wide state changed.

    The seed depends only on the test's id, not on what ran before, so a test that draws from the
    global RNG sees the same numbers alone, in the full suite and in any order. (Tests that need
    particular numbers still seed their own torch.Generator.)
    """
    _seed_global_rngs(request.node.nodeid)
    before = _snapshot()
    yield
    after = _snapshot()
    changed = [name for name in before if before[name] != after[name]]
    if changed:
        _restore(before, changed)  # so that the tests after this one still start clean
        pytest.fail("this test changed process-wide state and did not restore it: "
                    + "; ".join(_describe(n, before[n], after[n]) for n in changed)
                    + " (use a fixture or context manager that restores it)", pytrace=False)
