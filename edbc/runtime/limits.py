"""Refuse work that cannot fit, up front and with the estimate, instead of running out of memory.

The estimate is the tensor memory the runtime allocates: the model's parameters
(when the runtime is created), and for each mini-batch the parameters, its
arenas and the cell workspace of its largest batch (each call's temporaries).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import LimitError
from ..graph.ir import Graph
from ..schedule.ir import Schedule
from ..settings import memory_limit
from ..spec.model import ModelSpec

# Tensors may take at most this share of the memory available, leaving room for the rest.
_SHARE = 0.8
_FLOAT_BYTES = 4


def param_bytes(spec: ModelSpec) -> int:
    return sum(_FLOAT_BYTES * _numel(p.shape) for p in spec.params.values())


def arena_bytes(layout) -> int:
    """Bytes of a compiled mini-batch's arenas (its layout's shapes and rows)."""
    return sum(_FLOAT_BYTES * (rows + 1) * _numel(shape)
               for shape, rows in zip(layout.arena_shapes, layout.arena_rows.tolist()))


def workspace_bytes(graph: Graph, schedule: Schedule) -> int:
    """The largest batch's temporaries: every value of its cell (gathered inputs included), once a call."""
    largest = np.zeros(len(graph.types), dtype=np.int64)
    np.maximum.at(largest, schedule.batch_type, schedule.sizes)
    return max((int(k) * _FLOAT_BYTES * sum(_numel(v.shape) for v in t.program.values)
                for t, k in zip(graph.types, largest.tolist()) if k), default=0)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)  # Python ints: huge dimensions must not wrap around
    return n


def available_bytes(device: torch.device) -> int:
    limit = memory_limit()
    if limit is not None:
        return limit
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


def check_params_fit(spec: ModelSpec, device: torch.device) -> None:
    """Before the weights are drawn."""
    _check(device, f"model '{spec.name}'", "use smaller dims", spec.path, parameters=param_bytes(spec))


def check_minibatch_fits(spec: ModelSpec, graph: Graph, schedule: Schedule, layout,
                         device: torch.device, what: str) -> None:
    """Before a mini-batch's arenas are allocated."""
    _check(device, what, "use a smaller --batch-size", None, parameters=param_bytes(spec),
           arenas=arena_bytes(layout), workspace=workspace_bytes(graph, schedule))


def check_host_fits(what: str, advice: str, **parts: int) -> None:
    """Before a large host-side (numpy) allocation, such as the bitsets of |F*_t|."""
    _check(torch.device("cpu"), what, advice, None, "memory", **parts)


def _check(device: torch.device, what: str, advice: str, path: str | None, kind: str = "tensor memory",
           **parts: int) -> None:
    need = sum(parts.values())
    have = available_bytes(device)
    if need > _SHARE * have:
        split = ", ".join(f"{name} {_size(n)}" for name, n in parts.items())
        raise LimitError(f"{what} needs {_size(need)} of {kind} ({split}), but only {_size(have)} is "
                         f"available on {device.type} ({_SHARE:.0%} of it may be used); {advice}", path=path)


def _size(nbytes: int) -> str:
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
