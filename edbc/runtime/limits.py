"""Refuse work that cannot fit, up front and with the estimate, instead of running out of memory."""

from __future__ import annotations

import os

import torch

from ..errors import LimitError
from ..settings import MEMORY_LIMIT

# Arenas may take at most this share of the memory available, leaving room for the rest.
_SHARE = 0.8


def arena_bytes(layout) -> int:
    """Bytes of a compiled mini-batch's arenas (its layout's shapes and rows)."""
    return sum(4 * (rows + 1) * _numel(shape) for shape, rows in zip(layout.arena_shapes, layout.arena_rows.tolist()))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def available_bytes(device: torch.device) -> int:
    if MEMORY_LIMIT is not None:
        return MEMORY_LIMIT
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(layout, device: torch.device, what: str) -> None:
    need = arena_bytes(layout)
    have = available_bytes(device)
    if need > _SHARE * have:
        raise LimitError(f"{what} needs {_size(need)} of tensor memory, but only {_size(have)} is "
                         f"available on {device.type} ({_SHARE:.0%} of it may be used); use a smaller "
                         "--batch-size")


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
