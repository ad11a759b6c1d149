"""Training's randomness: what the noisy ops (dropout) of one step draw their masks from.

A mask entry is a pure function of the step's seed, the cell call's key, the op's site in its cell
and the column (`edbc.spec.ops.dropout_keep`). A call's key is its instance's key and its place
among that instance's calls: it does not depend on the batching, the granularity, the memory layout
or how instances are grouped into mini-batches, so the batched kernels, the one-call-at-a-time
reference and any sharding of a mini-batch draw the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.ir import Graph, csr_ptr


@dataclass(frozen=True)
class Dropout:
    seed: int
    instances: tuple[int, ...] | None = None  # each instance's key (default: its place in the mini-batch)


def call_keys(cell_graph: Graph, dropout: Dropout) -> np.ndarray:
    """int64 key of every cell-level node: instance key * 2**32 + its place among the instance's nodes."""
    instance = cell_graph.instance
    counts = np.bincount(instance, minlength=cell_graph.num_instances)
    order = np.argsort(instance, kind="stable")
    place = np.empty(len(instance), dtype=np.int64)
    place[order] = np.arange(len(instance)) - np.repeat(csr_ptr(counts)[:-1], counts)
    keys = np.arange(cell_graph.num_instances, dtype=np.int64) if dropout.instances is None \
        else np.asarray(dropout.instances, dtype=np.int64)
    return (keys[instance] << 32) | place
