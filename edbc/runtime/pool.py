"""Arena memory reused across mini-batches.

An arena set past the C allocator's mmap threshold (mvrnn's matrices: ~150 MB a mini-batch of
64) is otherwise handed back to the kernel when its executable goes and mapped afresh for the
next, every page faulted in and zeroed again: 40 % of mvrnn's execute time. The pool keeps such
buffers and hands one to the next executable once the executable that held it is gone.
"""

from __future__ import annotations

import weakref
from math import prod

import torch

ALIGN = 16  # floats: each arena starts on a 64-byte boundary
KEEP_FREE = 2  # buffers kept while no executable holds them


class ArenaPool:
    def __init__(self, device: torch.device):
        self.device = device
        self._entries: list[tuple[torch.Tensor, weakref.ref]] = []  # (flat buffer, its holder)

    def arenas(self, shapes: list[tuple[int, ...]], holder: object) -> list[torch.Tensor]:
        """Uninitialised tensors of `shapes`, views of one buffer that stays `holder`'s while it lives."""
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += -(-prod(shape) // ALIGN) * ALIGN
        flat = self._buffer(total, holder)
        return [flat[o:o + prod(s)].view(s) for o, s in zip(offsets, shapes)]

    def _buffer(self, numel: int, holder: object) -> torch.Tensor:
        free = [i for i, (_, who) in enumerate(self._entries) if who() is None]
        fits = [i for i in free if self._entries[i][0].numel() >= numel]
        if fits:
            chosen = min(fits, key=lambda i: self._entries[i][0].numel())
            flat = self._entries[chosen][0]
        else:
            chosen, flat = None, torch.empty(max(numel, 1), device=self.device)
        # The smallest free buffers go first, past KEEP_FREE (counting the one handed out).
        spare = sorted((i for i in free if i != chosen), key=lambda i: -self._entries[i][0].numel())
        dropped = set(spare[KEEP_FREE - 1:])
        self._entries = [e for i, e in enumerate(self._entries) if i not in dropped and i != chosen]
        self._entries.append((flat, weakref.ref(holder)))
        return flat

