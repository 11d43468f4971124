"""Fuzz harness (shared by tests/fuzz/test_*.py): mutations of tiny checkpoint files, a per-case time and allocation guard.

Every case writes one mutated file and runs a loader on it inside `guarded()`:
* a SIGALRM timer turns a hang into `Hang` (a BaseException our code never catches);
* `torch.empty` is wrapped so that any request for more bytes than the file holds fails the
  test (`TooBig`); tracemalloc's peak bounds what Python and numpy allocate;
* the only exception allowed out of the loader is `wanmoe.errors.WanmoeError`.

Example counts: `WANMOE_FUZZ_EXAMPLES` scales every test (default 1 = the CI run of > 2,000
files in total); `scripts/fuzz_long.sh` raises it. The seed is fixed (`derandomize`), so a CI
verdict is stable; `WANMOE_FUZZ_SEED` picks another stream for long runs.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from wanmoe.errors import WanmoeError

SCALE = float(os.environ.get("WANMOE_FUZZ_EXAMPLES", "1"))
SEED = os.environ.get("WANMOE_FUZZ_SEED")
CASE_SECONDS = float(os.environ.get("WANMOE_FUZZ_CASE_SECONDS", "5"))
PY_SLACK = 64  # tracemalloc peak may be this many times the file size (JSON dicts are bulky) ...
PY_FLOOR = 8 * 2**20  # ... plus this much
COUNTS: dict[str, int] = {}
OUTCOMES: dict[str, dict[str, int]] = {}


class Hang(BaseException):
    """A fuzz case ran longer than CASE_SECONDS."""


class TooBig(BaseException):
    """A loader asked torch for more bytes than the file it reads holds."""


def fuzz_settings(n: int):
    """Hypothesis settings for a test of `n` examples (times SCALE), fixed seed unless asked."""
    kw = dict(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    if SEED is None:
        kw["derandomize"] = True
    return settings(**kw)


def _nbytes(args, kwargs) -> int:
    shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    shape = kwargs.get("size", shape)
    n = 1
    for d in shape:
        n *= int(d)
    dtype = kwargs.get("dtype") or torch.get_default_dtype()
    return n * dtype.itemsize


@contextmanager
def guarded(file_size: int):
    """Time limit, torch.empty size limit and a tracemalloc peak check around one case."""
    real_empty = torch.empty

    def checked_empty(*args, **kwargs):
        if args or "size" in kwargs:
            need = _nbytes(args, kwargs)
            if need > max(file_size, 64):
                raise TooBig(f"torch.empty of {need} bytes for a {file_size}-byte file")
        return real_empty(*args, **kwargs)

    def on_alarm(*_):
        raise Hang(f"case ran longer than {CASE_SECONDS} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    torch.empty = checked_empty
    faulthandler.dump_traceback_later(3 * CASE_SECONDS, exit=True)  # a hang inside C code
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
        torch.empty = real_empty
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert peak <= PY_SLACK * file_size + PY_FLOOR, f"Python/numpy peak {peak} B for a {file_size} B file"


def run_case(kind: str, path: Path, load):
    """Run `load(path)` under the guard; returns its result or None when it raised WanmoeError."""
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    out = OUTCOMES.setdefault(kind, {"loaded": 0, "refused": 0})
    try:
        with guarded(path.stat().st_size):
            result = load(path)
    except WanmoeError as e:
        assert str(e) and "\n" not in str(e).strip(), f"error message is not one line: {e!r}"
        out["refused"] += 1
        return None
    out["loaded"] += 1
    return result


# ---- byte-level mutations -----------------------------------------------------------------

INTERESTING = [0, 1, 7, 8, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def byte_mutation(draw, data: bytes, hot: int):
    """One mutated copy of `data`; positions favour the first `hot` bytes (the header)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        size = len(buf)
        if size == 0:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        hi = min(hot, size) - 1 if draw(st.booleans()) and hot > 0 else size - 1
        pos = draw(st.integers(0, max(hi, 0)))
        op = draw(st.sampled_from(["flip", "byte", "u32", "u64", "cut", "insert", "delete"]))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            buf[pos] = draw(st.integers(0, 255))
        elif op in ("u32", "u64"):
            n = 4 if op == "u32" else 8
            v = draw(st.sampled_from(INTERESTING + [size, size + 1, size - 1 if size else 0]))
            buf[pos:pos + n] = (v % 2 ** (8 * n)).to_bytes(n, "little")
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        else:
            del buf[pos:pos + draw(st.integers(1, 32))]
    return bytes(buf)
