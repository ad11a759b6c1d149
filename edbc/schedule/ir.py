"""The schedule IR: a sequence of batches, each a set of nodes of one type."""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError
from ..graph.ir import Graph, csr_ptr
from .analysis import batchable_mask, lower_bound


class Schedule:
    """Batches in run order, as CSR: batch b runs `nodes[ptr[b]:ptr[b+1]]`, all of `batch_type[b]`."""

    __slots__ = ("policy", "ptr", "nodes", "batch_type")

    def __init__(self, policy: str, ptr, nodes, batch_type):
        self.policy = policy
        self.ptr = np.ascontiguousarray(ptr, dtype=np.int64)
        self.nodes = np.ascontiguousarray(nodes, dtype=np.int32)
        self.batch_type = np.ascontiguousarray(batch_type, dtype=np.int32)

    @staticmethod
    def from_batches(policy: str, batches: list[np.ndarray], graph: Graph) -> "Schedule":
        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        nodes = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int32)
        types = graph.node_type[nodes[csr_ptr(sizes)[:-1]]] if batches else np.zeros(0, dtype=np.int32)
        return Schedule(policy, csr_ptr(sizes), nodes, types)

    @property
    def num_batches(self) -> int:
        return len(self.batch_type)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.ptr)

    def batch(self, b: int) -> np.ndarray:
        return self.nodes[self.ptr[b]:self.ptr[b + 1]]

    def batch_of_node(self, num_nodes: int) -> np.ndarray:
        where = np.empty(num_nodes, dtype=np.int64)
        where[self.nodes] = np.repeat(np.arange(self.num_batches), self.sizes)
        return where

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ptr": self.ptr, "nodes": self.nodes, "batch_type": self.batch_type}


def verify_schedule(graph: Graph, schedule: Schedule) -> None:
    """Every node exactly once, after all its arguments; one type a batch; unbatchable nodes alone."""
    n = graph.num_nodes

    def fail(message: str):
        raise VerificationError(f"schedule verifier ({schedule.policy}): {message}")

    ptr = schedule.ptr
    if len(ptr) != schedule.num_batches + 1 or ptr[0] != 0 or ptr[-1] != len(schedule.nodes) \
            or np.any(np.diff(ptr) <= 0):
        fail("batch index is not a CSR of non-empty batches")
    nodes = schedule.nodes.astype(np.int64)
    if np.any((nodes < 0) | (nodes >= n)):
        fail("a batch holds a node that is not in the graph")
    seen = np.bincount(nodes, minlength=n)
    if np.any(seen != 1):
        v = int(np.flatnonzero(seen != 1)[0])
        fail(f"node %{v} runs {seen[v]} times; every node must run exactly once")
    owner_type = np.repeat(schedule.batch_type, schedule.sizes)
    bad = np.flatnonzero(graph.node_type[nodes] != owner_type)
    if len(bad):
        b = int(np.searchsorted(ptr, bad[0], side="right") - 1)
        fail(f"batch {b} of type t{schedule.batch_type[b]} holds node %{nodes[bad[0]]} of type "
             f"t{graph.node_type[nodes[bad[0]]]}")
    alone = ~batchable_mask(graph)[schedule.batch_type]
    if np.any(alone & (schedule.sizes > 1)):
        fail(f"batch {int(np.flatnonzero(alone & (schedule.sizes > 1))[0])} batches unbatchable nodes")
    batch_of = schedule.batch_of_node(n)
    owner = np.repeat(np.arange(n), np.diff(graph.arg_ptr))
    real = graph.arg_node >= 0
    early = np.flatnonzero(real & (batch_of[np.maximum(graph.arg_node, 0)] >= batch_of[owner]))
    if len(early):
        e = int(early[0])
        fail(f"node %{owner[e]} runs in batch {batch_of[owner[e]]} but its argument %{graph.arg_node[e]} "
             f"runs in batch {batch_of[graph.arg_node[e]]}")


def format_schedule(graph: Graph, schedule: Schedule, max_batches: int | None = 40) -> str:
    lines = [f"schedule ({schedule.policy}): {schedule.num_batches} batches, "
             f"lower bound {lower_bound(graph)}, {len(schedule.nodes)} nodes"]
    shown = schedule.num_batches if max_batches is None else min(max_batches, schedule.num_batches)
    for b in range(shown):
        lines.append(f"  b{b:<4} {graph.types[schedule.batch_type[b]].name:<32} x{schedule.sizes[b]}")
    if shown < schedule.num_batches:
        lines.append(f"  ... {schedule.num_batches - shown} more batches")
    return "\n".join(lines)
