"""Attention kernels by name, and `--attention auto`: the fastest one, measured on the device.

Every backend has the contract of `wanmoe.models.attention` (q [B, Lq, N, hd], k/v [B, Lk, N, hd],
key lengths k_lens, output in q's dtype). The registry, in order of preference on a tie:

  fa3             flash-attn 3 (`flash_attn_interface`, Hopper), fp16/bf16
  fa2             flash-attn 2 (`flash_attn`), fp16/bf16
  cudnn           torch SDPA restricted to the cuDNN attention kernel
  sdpa-flash      torch SDPA restricted to its FlashAttention-2 kernel, fp16/bf16
  sdpa-efficient  torch SDPA restricted to the memory-efficient kernel
  sdpa            torch SDPA, torch's own dispatch (always available: the fallback)
  sage            SageAttention (`sageattention`, int8 Q·K): approximate, opt-in only

`AttentionAutotuner` (what `--attention auto` installs) times every backend available for a
call's (q shape, k shape, dtype, device) once, on the first call of that key, keeps the fastest
whose error against exact attention is within `max_error`, caches it and logs the table. On a
device it does not tune (CPU by default) it is exactly `attention_sdpa`, as before. The timer and
the registry are parameters, so the choice is testable without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from wanmoe.models.attention import attention_reference, attention_sdpa, lens_list

AttnFn = Callable[..., torch.Tensor]
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    """One attention kernel: its function, when it can run a call, and whether it is exact."""

    name: str
    fn: AttnFn
    available: Callable[[torch.Tensor], bool]
    exact: bool = True  # False: an approximation (SageAttention), used by auto only when opted in


@functools.cache
def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _uniform(k_lens, b: int, lk: int) -> tuple[list[int], bool]:
    lens = lens_list(k_lens, b, lk)
    return lens, len(set(lens)) == 1


def _per_sample(fn: AttnFn, q, k, v, k_lens) -> torch.Tensor:
    """`fn` on unmasked inputs: sliced to the common key length, or one sample at a time."""
    lens, same = _uniform(k_lens, q.shape[0], k.shape[1])
    if same:
        return fn(q, k[:, : lens[0]], v[:, : lens[0]])
    return torch.cat([fn(q[i : i + 1], k[i : i + 1, : n], v[i : i + 1, : n]) for i, n in enumerate(lens)])


def _flash(module_name: str) -> AttnFn:
    def call(q, k, v, k_lens=None):
        mod = _module(module_name)
        half = q.dtype if q.dtype in HALF else torch.bfloat16

        def one(qs, ks, vs):
            out = mod.flash_attn_func(qs.to(half), ks.to(half), vs.to(half),
                                      softmax_scale=1.0 / math.sqrt(q.shape[-1]), causal=False)
            return out[0] if isinstance(out, tuple) else out  # flash-attn 3 may return (out, lse)

        return _per_sample(one, q, k, v, k_lens).to(q.dtype)

    call.__name__ = f"attention_{module_name}"
    return call


def _sdpa_kernel(kind: str) -> AttnFn:
    def call(q, k, v, k_lens=None):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def one(qs, ks, vs):
            return F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2).to(qs.dtype),
                                                  vs.transpose(1, 2).to(qs.dtype)).transpose(1, 2)

        with sdpa_kernel(getattr(SDPBackend, kind)):
            return _per_sample(one, q, k, v, k_lens).to(q.dtype)

    call.__name__ = f"attention_sdpa_{kind.lower()}"
    return call


def attention_sage(q, k, v, k_lens=None):
    """SageAttention (8-bit Q·K, approximate), NHD layout as our tensors are."""
    mod = _module("sageattention")
    half = q.dtype if q.dtype in HALF else torch.bfloat16

    def one(qs, ks, vs):
        return mod.sageattn(qs.to(half), ks.to(half), vs.to(half), tensor_layout="NHD", is_causal=False)

    return _per_sample(one, q, k, v, k_lens).to(q.dtype)


def _cc(q) -> tuple[int, int]:
    return torch.cuda.get_device_capability(q.device)


def _has_sdp(kind: str) -> bool:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return False
    return hasattr(SDPBackend, kind)


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("fa3", _flash("flash_attn_interface"),
            lambda q: q.is_cuda and q.dtype in HALF and _module("flash_attn_interface") is not None
            and _cc(q) >= (9, 0)),
    Backend("fa2", _flash("flash_attn"),
            lambda q: q.is_cuda and q.dtype in HALF and _module("flash_attn") is not None),
    Backend("cudnn", _sdpa_kernel("CUDNN_ATTENTION"),
            lambda q: q.is_cuda and q.dtype in HALF and _has_sdp("CUDNN_ATTENTION")),
    Backend("sdpa-flash", _sdpa_kernel("FLASH_ATTENTION"),
            lambda q: q.is_cuda and q.dtype in HALF and _has_sdp("FLASH_ATTENTION")),
    Backend("sdpa-efficient", _sdpa_kernel("EFFICIENT_ATTENTION"),
            lambda q: q.is_cuda and _has_sdp("EFFICIENT_ATTENTION")),
    Backend("sdpa", attention_sdpa, lambda q: True),
    Backend("sage", attention_sage,
            lambda q: q.is_cuda and q.dtype in HALF and _module("sageattention") is not None, exact=False),
)}


def cuda_timer(fn: AttnFn, q, k, v, k_lens, reps: int = 3) -> float:
    """Median seconds of `reps` calls after one warm-up call (CUDA events; wall clock on CPU)."""
    fn(q, k, v, k_lens)
    times = []
    for _ in range(reps):
        if q.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(q, k, v, k_lens)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            import time

            t0 = time.perf_counter()
            fn(q, k, v, k_lens)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    den = ref.abs().max().item()
    return (a.float() - ref.float()).abs().max().item() / den if den else 0.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class AttentionAutotuner:
    """`--attention auto`: per (q shape, k shape, dtype, device), the fastest accurate backend.

    registry: name -> Backend (default REGISTRY); timer(fn, q, k, v, k_lens) -> seconds (default
    `cuda_timer`); sage: also try the approximate backends; devices: device types that are tuned
    (others run `attention_sdpa`); check_queries: the error against exact (fp32 reference) is
    measured on this many leading queries of every head; max_error: max |err| / max |exact| a
    backend may have to be chosen; log: called with one line per tuned key (default stderr).
    """

    def __init__(self, registry: dict[str, Backend] | None = None, timer=None, *, sage: bool = False,
                 devices: tuple[str, ...] = ("cuda",), check_queries: int = 32, max_error: float = 0.05,
                 log: Callable[[str], None] | None = _stderr) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.timer = timer or cuda_timer
        self.sage = sage
        self.devices = devices
        self.check_queries = check_queries
        self.max_error = max_error
        self.log = log
        self.choices: dict[tuple, str] = {}  # key -> backend name
        self.reports: dict[tuple, dict[str, dict]] = {}  # key -> name -> {seconds, error, note}

    @staticmethod
    def key(q: torch.Tensor, k: torch.Tensor) -> tuple:
        return (tuple(q.shape), tuple(k.shape), q.dtype, q.device)

    def __call__(self, q, k, v, k_lens=None) -> torch.Tensor:
        if q.device.type not in self.devices:
            return attention_sdpa(q, k, v, k_lens)
        key = self.key(q, k)
        name = self.choices.get(key)
        if name is None:
            name = self.tune(q, k, v, k_lens)
        return self.registry.get(name, REGISTRY["sdpa"]).fn(q, k, v, k_lens)

    def candidates(self, q) -> list[Backend]:
        return [b for b in self.registry.values() if (b.exact or self.sage) and b.available(q)]

    @torch.compiler.disable  # measured eagerly, never traced into a compiled block
    @torch.no_grad()
    def tune(self, q, k, v, k_lens=None) -> str:
        """Time every candidate on this call's tensors; cache and return the winner's name."""
        key = self.key(q, k)
        n = min(self.check_queries, q.shape[1])
        exact = attention_reference(q[:, :n], k, v, k_lens)  # exact rows for the first n queries
        report: dict[str, dict] = {}
        for b in self.candidates(q):
            try:
                err = _rel_err(b.fn(q, k, v, k_lens)[:, :n], exact)
            except Exception as e:  # noqa: BLE001 - a kernel that cannot run this call is no candidate
                report[b.name] = {"note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"}
                continue
            if not err <= self.max_error:  # NaN included
                report[b.name] = {"error": err, "note": f"error {err:.1e} > {self.max_error:g}"}
                continue
            report[b.name] = {"error": err, "seconds": float(self.timer(b.fn, q, k, v, k_lens))}
        timed = [name for name, r in report.items() if "seconds" in r]
        winner = min(timed, key=lambda name: report[name]["seconds"]) if timed else "sdpa"
        self.choices[key] = winner
        self.reports[key] = report
        if self.log is not None:
            self.log(self.describe(key))
        return winner

    def describe(self, key: tuple) -> str:
        qs, ks, dtype, device = key
        parts = []
        for name, r in self.reports.get(key, {}).items():
            if "seconds" in r:
                parts.append(f"{name} {1e3 * r['seconds']:.3g} ms (err {r['error']:.1e})")
            else:
                parts.append(f"{name} {r['note']}")
        return (f"attention auto: q {list(qs)} k {list(ks)} {str(dtype).replace('torch.', '')} "
                f"{device} -> {self.choices.get(key)} [" + "; ".join(parts) + "]")


AUTO = AttentionAutotuner()  # shared by every module with --attention auto (one cache per process)
AUTO_SAGE = AttentionAutotuner(sage=True)  # --attention auto+sage


def named_backend(name: str) -> AttnFn:
    """A registry backend that refuses (InputError) a call it cannot run, naming what is missing."""
    backend = REGISTRY[name]

    def call(q, k, v, k_lens=None):
        if not backend.available(q):
            from wanmoe.errors import InputError

            raise InputError(f"attention backend {name!r} cannot run a {str(q.dtype).replace('torch.', '')} "
                             f"call on {q.device} (needs CUDA, fp16/bf16 where it is a flash kernel, "
                             f"and its package installed); use --attention auto or sdpa")
        return backend.fn(q, k, v, k_lens)

    call.__name__ = backend.fn.__name__
    return call
