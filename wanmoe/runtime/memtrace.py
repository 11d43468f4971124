"""Live-byte tracing of a forward on the meta device: what a real run would hold at its peak.

`LiveBytes` is a TorchDispatchMode that counts the bytes of every tensor an op creates (outputs
that alias an input, i.e. views and in-place results, are not new memory) and subtracts them
when the tensor object dies (a weakref finalizer). A view keeps its base alive (`_base`), so a
storage is freed when its last user is gone, as in the caching allocator. Run at real size on
meta tensors this costs no memory and no compute, and is the evidence behind
`runtime.memory`'s activation model (docs/memory.md).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of tensors created inside the mode: `live` now, `peak` since entry (or reset)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.peak_ops: list[str] = []  # the op that set the peak, for reports

    def _free(self, n: int) -> None:
        self.live -= n

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        flat, _ = tree_flatten(out)
        for i, t in enumerate(flat):
            if not isinstance(t, torch.Tensor):
                continue
            ret = returns[i] if len(returns) > 1 else returns[0]  # one return may be a list (unbind)
            info = ret.alias_info
            if info is not None:  # a view or an in-place result: no new storage
                continue
            n = t.untyped_storage().nbytes()
            self.live += n
            weakref.finalize(t, self._free, n)
        if self.live > self.peak:
            self.peak = self.live
            self.peak_ops = [str(func)]
        return out


def flash_like_attention(q, k, v, k_lens=None):
    """Stand-in for a memory-efficient attention kernel on meta: the output [B, L, N, hd] and
    an fp32 log-sum-exp [B, N, L], nothing of size L x Lk (flash-attn / SDPA flash on a GPU)."""
    b, lq, n, _ = q.shape
    torch.empty(b, n, lq, dtype=torch.float32, device=q.device)  # lse: freed at once, as a kernel's
    return torch.empty_like(q)
