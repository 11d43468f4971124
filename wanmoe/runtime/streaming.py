"""Block streaming: a DiT's repeated blocks live in host memory, N of them on the device.

`BlockStreaming` is a placement policy (`activate(expert)` / `release()`, like
`runtime.offload.ExpertOffload`) that installs a `BlockStreamer` as each expert's
`block_runner`. Block weights stay in host memory (pinned when the device is CUDA); a ring of N
device slots holds the blocks being computed and prefetched:

    copy stream:    load(i+1) ........ [wait free(i-1)] load(i+2) ...
    compute stream: [wait loaded(i)] block i [record free(i)] [wait loaded(i+1)] block i+1 ...

Block i uses slot i % N. The copy of block i+N into that slot waits (a CUDA event, no device
sync) until block i has finished with it, so with N = 2 the copy of the next block overlaps
the current block's compute. The non-block tensors (embeddings, time MLPs, head) of the active
expert are resident on the device.

Host copies are packed into 1 GiB slabs (`HostArena`): pinning each weight on its own would
cost up to 2x host RAM (the CUDA host allocator rounds to powers of two). Every tensor a block
owns moves: parameters and buffers alike (float weights, GGUF `qweight`,
fp8 / int8 `weight` + `weight_scale`, biases, norms, modulation), so every weight format
streams the same way. A block's tensors are re-pointed with `tensor.data = slot` (the
Parameter objects and module types stay the same), so the math of the block is untouched and
the results are bit-identical to a resident run. LoRA patches (`WeightLinear.patches`) are left
where they were loaded: `LoRAPatch.side(x)` moves its factors to x's device per call.

On a CPU the "device" is host memory too: the same code runs, copying each block into its
slot (events and streams are skipped), which is what the CPU tests exercise. The CUDA path
(pinned memory, side stream, events) has not been run on a GPU in this repository yet.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_RESIDENT_BLOCKS = 2


def _owned_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer under `module`, each tensor object once."""
    seen, out = set(), []
    for mod in module.modules():
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _non_block_tensors(model: nn.Module, repeated: str) -> list[torch.Tensor]:
    blocks = {id(t) for t in _owned_tensors(getattr(model, repeated))}
    return [t for t in _owned_tensors(model) if id(t) not in blocks]


class SlotRing:
    """N device slots shared by every streamed expert, the copy stream and the slot events."""

    def __init__(self, device: torch.device, n: int) -> None:
        if n < 1:
            raise ValueError(f"resident blocks must be >= 1, got {n}")
        self.device, self.n = torch.device(device), n
        self.cuda = self.device.type == "cuda"
        self.slots: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.loaded = [None] * n  # per slot: event recorded on the copy stream after its copy
        self.free = [None] * n  # per slot: event recorded on the compute stream after its block

    def _buffers(self, s: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
        """Slot s's tensors shaped like `like` (reallocated only where a shape/dtype differs).

        Allocated on the compute stream, before the copy stream touches them; they live until
        `clear()`, which first waits for the copy stream, so no cross-stream reuse can occur.
        """
        slot = self.slots[s]
        for j, host in enumerate(like):
            if j == len(slot):
                slot.append(torch.empty(host.shape, dtype=host.dtype, device=self.device))
            elif slot[j].shape != host.shape or slot[j].dtype != host.dtype:
                slot[j] = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        return slot

    def load(self, s: int, host: list[torch.Tensor]) -> None:
        """Copy one block's host tensors into slot s (on the copy stream on CUDA)."""
        slot = self._buffers(s, host)
        if not self.cuda:
            for dst, src in zip(slot, host):
                dst.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            if self.free[s] is not None:  # the block that used slot s last must be done with it
                self.copy_stream.wait_event(self.free[s])
            for dst, src in zip(slot, host):
                dst.copy_(src, non_blocking=True)
            self.loaded[s] = torch.cuda.Event()
            self.loaded[s].record(self.copy_stream)

    def wait_loaded(self, s: int) -> list[torch.Tensor]:
        """Slot s's tensors, once their copy is done (the compute stream waits, the host does not)."""
        if self.cuda and self.loaded[s] is not None:
            torch.cuda.current_stream(self.device).wait_event(self.loaded[s])
        return self.slots[s]

    def mark_free(self, s: int) -> None:
        if self.cuda:
            self.free[s] = torch.cuda.Event()
            self.free[s].record(torch.cuda.current_stream(self.device))

    def clear(self) -> None:
        """Drop the slots (after the copy stream has finished with them)."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        self.slots = [[] for _ in range(self.n)]
        self.loaded, self.free = [None] * self.n, [None] * self.n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in self.slots for t in slot)


class BlockStreamer:
    """The block runner of one streamed model: block tensors in host memory, run through a ring."""

    def __init__(self, model: nn.Module, ring: SlotRing) -> None:
        self.model, self.ring = model, ring
        self.repeated = model.meta.repeated
        self.previous = model.block_runner
        self.blocks = list(getattr(model, self.repeated))
        self.index = {id(b): i for i, b in enumerate(self.blocks)}
        self.arena = HostArena(pin=ring.cuda)
        self.tensors = [_owned_tensors(b) for b in self.blocks]  # the model's tensor objects
        self.host = []  # per block, per tensor: its host copy in the arena (pinned on CUDA)
        for ts in self.tensors:
            self.host.append([])
            for t in ts:  # one tensor at a time: the old storage is freed as we go
                self.host[-1].append(self.arena.put(t))
                t.data = self.host[-1][-1]
        self.non_block = _non_block_tensors(model, self.repeated)
        model.block_runner = self._run

    def _run(self, blocks, h, *args):
        """Same contract as `models.dit.run_blocks`: runs `blocks` (this model's blocks, all or
        a subset in order, e.g. from a caching hook) through the ring."""
        order = [self.index[id(b)] for b in blocks]  # KeyError: not a block of this model
        ring = self.ring
        for k in range(min(ring.n, len(order))):
            ring.load(k % ring.n, self.host[order[k]])
        for k, i in enumerate(order):
            s = k % ring.n
            for t, dev in zip(self.tensors[i], ring.wait_loaded(s)):
                t.data = dev
            h = self.blocks[i](h, *args)
            for t, host in zip(self.tensors[i], self.host[i]):
                t.data = host
            ring.mark_free(s)
            if k + ring.n < len(order):
                ring.load(s, self.host[order[k + ring.n]])
        return h

    def place_non_block(self, device: torch.device) -> None:
        """Move the non-block tensors (embeddings, time MLPs, head) to `device`."""
        for t in self.non_block:
            t.data = t.data.to(device)

    def remove(self) -> None:
        """Put the previous runner back; block tensors stay in host memory."""
        self.model.block_runner = self.previous


SLAB_BYTES = 2**30  # host slabs of exactly 1 GiB (see HostArena)
_ALIGN = 512  # byte alignment of each tensor inside a slab


class HostArena:
    """Host copies of many tensors packed into a few large slabs (page-locked when `pin`).

    PyTorch's CUDA host allocator rounds a pinned request up to a power of two, so pinning
    each weight on its own would cost up to 2x (a 141.6 MB A14B ffn weight takes 256 MiB).
    Slabs of exactly SLAB_BYTES waste only the tail of each slab. A tensor larger than a slab
    gets its own allocation. If the OS refuses more page-locked memory, slabs stay pageable.
    """

    def __init__(self, pin: bool, slab_bytes: int = SLAB_BYTES) -> None:
        self.pin, self.slab_bytes = pin, slab_bytes
        self.slabs: list[torch.Tensor] = []
        self.offset = 0

    def _new(self, nbytes: int) -> torch.Tensor:
        if self.pin:
            try:
                return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            except RuntimeError:
                self.pin = False
        return torch.empty(nbytes, dtype=torch.uint8)

    def _alloc(self, nbytes: int) -> torch.Tensor:
        if nbytes > self.slab_bytes:
            return self._new(nbytes)
        start = -(-self.offset // _ALIGN) * _ALIGN
        if not self.slabs or start + nbytes > self.slab_bytes:
            self.slabs.append(self._new(self.slab_bytes))
            start = 0
        self.offset = start + nbytes
        return self.slabs[-1][start:start + nbytes]

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous host copy of `t` inside the arena (same dtype and shape)."""
        src = t.data
        raw = self._alloc(src.numel() * src.element_size())
        host = raw.view(src.dtype).view(src.shape)
        host.copy_(src)
        return host

    @property
    def nbytes(self) -> int:
        return sum(s.numel() for s in self.slabs)


class BlockStreaming:
    """Placement policy: every expert's blocks streamed through one shared ring of N slots."""

    offloads = True

    def __init__(self, experts: dict[str, nn.Module], device: torch.device,
                 resident: int = DEFAULT_RESIDENT_BLOCKS) -> None:
        self.device = torch.device(device)
        self.ring = SlotRing(self.device, resident)
        self.streamers = {name: BlockStreamer(m, self.ring) for name, m in experts.items()}

    def activate(self, expert: str) -> None:
        """Non-block tensors of `expert` on the device, the other experts' in host memory."""
        for name, s in self.streamers.items():
            if name != expert:
                s.place_non_block(torch.device("cpu"))
        if expert in self.streamers:
            self.streamers[expert].place_non_block(self.device)

    def release(self) -> None:
        self.activate("")
        self.ring.clear()

    def remove(self) -> None:
        """Uninstall: previous runners back (weights stay in host memory)."""
        self.release()
        for s in self.streamers.values():
            s.remove()
