"""Operand classification of a laid-out schedule, and the memory figures it gives.

Every float operand of a batch is served one of three ways:
  view       consecutive arena rows, aligned with the batch (no copy)
  broadcast  one value for every node, or zeros: one row expanded (no copy)
  gather     rows picked at run time (a copy of `k` rows)
Inside cell kernels nothing is gathered (`edbc.memory.cells`): internal
batches read views, broadcasts and parameters, shared or stacked once when
the kernel is built. The executor builds its tensors from `batch_operands`,
and `memory_stats` adds the figures up for reports, so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from ..errors import VerificationError
from ..graph.ir import Graph
from ..schedule.ir import Schedule
from ..spec.program import Program, Shape
from .cells import CellPlan, plan_cell
from .layout import Layout

VIEW, BROADCAST, GATHER = "view", "broadcast", "gather"


@dataclass(frozen=True)
class BatchOperand:
    kind: str
    arena: int  # -1 for zeros with no arena of that shape
    rows: np.ndarray  # view: [first row]; broadcast: [the row]; gather: one row per node
    nbytes: int  # bytes of the operand (`k` rows)


@dataclass(frozen=True)
class MemoryStats:
    gathers: int  # runtime gather operations
    gather_bytes: int  # bytes they copy
    operand_bytes: int  # bytes of every float batch operand
    cell_calls: int  # torch calls inside cell kernels: their internal batches, run for every batch
    stacked_weights: int  # parameter operands stacked once, when kernels are built

    @property
    def view_fraction(self) -> float:
        """Share of operand bytes served without a copy."""
        return 1.0 - self.gather_bytes / self.operand_bytes if self.operand_bytes else 1.0

    def to_json(self) -> dict:
        return {"gathers": self.gathers, "gather_bytes": self.gather_bytes, "operand_bytes": self.operand_bytes,
                "cell_calls": self.cell_calls, "stacked_weights": self.stacked_weights,
                "view_fraction": round(self.view_fraction, 4)}

    def __add__(self, other: "MemoryStats") -> "MemoryStats":
        return MemoryStats(*(a + b for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple:
        return (self.gathers, self.gather_bytes, self.operand_bytes, self.cell_calls, self.stacked_weights)


NO_STATS = MemoryStats(0, 0, 0, 0, 0)


def arena_of_shape(layout: Layout, shape: Shape) -> int:
    try:
        return layout.arena_shapes.index(tuple(shape))
    except ValueError:
        return -1


def batch_operands(graph: Graph, schedule: Schedule, layout: Layout, b: int) -> list[BatchOperand]:
    """The float operands of batch `b`, in the order of its program's float inputs."""
    nodes = schedule.batch(b)
    k = len(nodes)
    program = graph.types[schedule.batch_type[b]].program
    out = []
    for p, value in enumerate(program.float_inputs):
        shape = program.values[value].shape
        nbytes = k * prod(shape) * 4
        e = graph.arg_ptr[nodes] + p
        producer, slot = graph.arg_node[e], graph.arg_slot[e]
        real = producer >= 0
        if not real.any():
            a = arena_of_shape(layout, shape)
            out.append(BatchOperand(BROADCAST, a, np.array([layout.arena_rows[a] if a >= 0 else 0]), nbytes))
            continue
        values = graph.value_ptr[producer[real]] + slot[real]
        arena_ids = np.unique(layout.value_arena[values])
        if len(arena_ids) != 1:
            raise VerificationError(f"batch {b}: operand {p} spans several arenas")
        a = int(arena_ids[0])
        rows = np.full(k, layout.arena_rows[a], dtype=np.int64)  # the zero row for zeros
        rows[real] = layout.value_row[values]
        if k == 1 or (real.all() and np.all(np.diff(rows) == 1)):
            out.append(BatchOperand(VIEW, a, rows[:1], nbytes))
        elif np.all(rows == rows[0]):
            out.append(BatchOperand(BROADCAST, a, rows[:1], nbytes))
        else:
            out.append(BatchOperand(GATHER, a, rows, nbytes))
    return out


def never_views(graph: Graph, schedule: Schedule) -> int:
    """Bytes of batch operands that no layout can serve as a view: they read a value twice
    (one row cannot sit at two places), mix zeros with values, or read three or more
    producer blocks of which more than two only in part (a run of rows crosses whole blocks
    between its first and its last)."""
    batch_of = schedule.batch_of_node(graph.num_nodes)
    width = int(graph.num_outputs_per_type.max(initial=1))
    total = 0
    for b in range(schedule.num_batches):
        nodes = schedule.batch(b)
        k = len(nodes)
        program = graph.types[schedule.batch_type[b]].program
        for p, value in enumerate(program.float_inputs):
            e = graph.arg_ptr[nodes] + p
            producer, slot = graph.arg_node[e], graph.arg_slot[e]
            if k == 1 or np.all(producer < 0) or np.all(producer == producer[0]):
                continue
            nbytes = k * prod(program.values[value].shape) * 4
            if np.any(producer < 0) or len(np.unique(graph.value_ptr[producer] + slot)) < k:
                total += nbytes
                continue
            blocks, counts = np.unique(batch_of[producer] * width + slot, return_counts=True)
            if np.count_nonzero(counts < schedule.sizes[blocks // width]) > 2:
                total += nbytes
    return total


def memory_stats(graph: Graph, schedule: Schedule, layout: Layout, plans: dict[Program, CellPlan]) -> MemoryStats:
    """Gathers and bytes of one compiled mini-batch; `plans`: the cell plans of (at least) the
    programs its batches run."""
    gathers = gather_bytes = operand_bytes = cell_calls = 0
    for b in range(schedule.num_batches):
        for o in batch_operands(graph, schedule, layout, b):
            operand_bytes += o.nbytes
            if o.kind == GATHER:
                gathers += 1
                gather_bytes += o.nbytes
        cell_calls += len(plans[graph.types[schedule.batch_type[b]].program].steps)
    used = {graph.types[t].program for t in np.unique(schedule.batch_type)}
    stacked = sum(plans[p].stacked_weights for p in used)
    return MemoryStats(gathers, gather_bytes, operand_bytes, cell_calls, stacked)


def cell_plans(graph: Graph, param_shapes: dict[str, Shape], memory: str) -> dict[Program, CellPlan]:
    """The cell plan of every node type of `graph` for memory mode `memory`."""
    return {t.program: plan_cell(t.program, param_shapes, memory) for t in graph.types}


def format_memory(stats: dict[str, MemoryStats], compiled: str, minibatches: int) -> str:
    """The `inspect` lines comparing memory modes (`compiled`: the plan's own)."""
    modes = [compiled] + [m for m in stats if m != compiled]
    head = " vs ".join(f"{m}{' (compiled)' if m == compiled else ''}" for m in modes)
    per = max(minibatches, 1)

    def row(name: str, fn) -> str:
        return f"    {name:<34}" + " vs ".join(fn(stats[m]) for m in modes)

    return "\n".join([
        f"  memory       {head}, per mini-batch",
        row("gathers", lambda s: f"{s.gathers / per:.1f}"),
        row("gather bytes", lambda s: f"{s.gather_bytes / per / 2**20:.3f} MiB"),
        row("operand bytes served as views", lambda s: f"{100 * s.view_fraction:.1f}%"),
        row("torch calls inside cell kernels", lambda s: f"{s.cell_calls / per:.0f}"),
        row("weights stacked at compile time", lambda s: f"{s.stacked_weights / per:.0f}"),
    ])
