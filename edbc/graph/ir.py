"""The dataflow graph IR of one mini-batch, stored column-wise.

A node is one call of a `NodeType` (a cell at cell level, one primitive op at
op level, an opaque typed node in a bare DAG). Arguments are `(node, slot)`
pairs in CSR form, where `slot` picks one of the producer's outputs and node
-1 stands for zeros. Immediates (token ids) have a CSR of their own.

Invariant: every argument refers to an earlier node, so node order is a
topological order and the graph is acyclic by construction (`verify_graph`
checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..settings import CELL, DAG, OP  # noqa: F401 (the graph levels; defined where the CLI reads them)
from ..spec.program import Program


@dataclass(frozen=True, eq=False)
class NodeType:
    name: str
    program: Program | None = None  # what one node computes; None in bare typed DAGs
    batchable: bool = True

    @property
    def num_outputs(self) -> int:
        return 1 if self.program is None else len(self.program.outputs)


class Graph:
    """Columnar merged DAG. Arrays are not to be mutated once built."""

    __slots__ = ("granularity", "types", "node_type", "arg_ptr", "arg_node", "arg_slot",
                 "imm_ptr", "imm", "instance", "num_instances", "out_node", "out_slot", "_cache")

    def __init__(self, granularity: str, types: tuple[NodeType, ...], node_type, arg_ptr, arg_node,
                 arg_slot, imm_ptr, imm, instance, num_instances: int, out_node, out_slot, value_ptr=None):
        """`value_ptr`, where the builder has it already, saves computing it (see `value_ptr`)."""
        self.granularity = granularity
        self.types = tuple(types)
        self.node_type = np.ascontiguousarray(node_type, dtype=np.int32)
        self.arg_ptr = np.ascontiguousarray(arg_ptr, dtype=np.int64)
        self.arg_node = np.ascontiguousarray(arg_node, dtype=np.int32)
        self.arg_slot = np.ascontiguousarray(arg_slot, dtype=np.int32)
        self.imm_ptr = np.ascontiguousarray(imm_ptr, dtype=np.int64)
        self.imm = np.ascontiguousarray(imm, dtype=np.int64)
        self.instance = np.ascontiguousarray(instance, dtype=np.int32)
        self.num_instances = int(num_instances)
        self.out_node = np.ascontiguousarray(out_node, dtype=np.int32)
        self.out_slot = np.ascontiguousarray(out_slot, dtype=np.int32)
        self._cache: dict = {} if value_ptr is None else {"value_ptr": np.ascontiguousarray(value_ptr, dtype=np.int64)}

    @property
    def num_nodes(self) -> int:
        return len(self.node_type)

    @property
    def num_edges(self) -> int:
        return len(self.arg_node)

    def args(self, node: int) -> list[tuple[int, int]]:
        lo, hi = self.arg_ptr[node], self.arg_ptr[node + 1]
        return list(zip(self.arg_node[lo:hi].tolist(), self.arg_slot[lo:hi].tolist()))

    def imms(self, node: int) -> list[int]:
        return self.imm[self.imm_ptr[node]:self.imm_ptr[node + 1]].tolist()

    def cached(self, key, compute):
        """Memoise an analysis of this (immutable) graph."""
        if key not in self._cache:
            self._cache[key] = compute(self)
        return self._cache[key]

    @property
    def num_outputs_per_type(self) -> np.ndarray:
        return self.cached("num_outputs_per_type",
                           lambda g: np.array([t.num_outputs for t in g.types], dtype=np.int64))

    @property
    def value_ptr(self) -> np.ndarray:
        """Values are numbered node by node: value id = value_ptr[node] + slot."""
        def compute(g):
            ptr = np.zeros(g.num_nodes + 1, dtype=np.int64)
            np.cumsum(g.num_outputs_per_type[g.node_type], out=ptr[1:])
            return ptr
        return self.cached("value_ptr", compute)

    @property
    def num_values(self) -> int:
        return int(self.value_ptr[-1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns, for serialisation."""
        return {k: getattr(self, k) for k in ("node_type", "arg_ptr", "arg_node", "arg_slot",
                                              "imm_ptr", "imm", "instance", "out_node", "out_slot")}


def csr_ptr(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def csr_gather(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the CSR entries of `rows`, concatenated, and each entry's row index in `rows`."""
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets, owner
