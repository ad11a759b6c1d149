"""Operand classification of a laid-out schedule, and the memory figures it gives.

Every float operand of a batch is served one of three ways:
  view       consecutive arena rows, aligned with the batch (no copy)
  broadcast  one value for every node, or zeros: one row expanded (no copy)
  gather     rows picked at run time (a copy of `k` rows)
Inside cell kernels nothing is gathered (`edbc.cell`): internal
batches read views, broadcasts and parameters, shared or stacked once when
the kernel is built. The executor builds its tensors from `batch_operands`,
and `memory_stats` adds the figures up for reports, so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod
from typing import ClassVar

import numpy as np

from ..errors import VerificationError
from ..graph.ir import Graph, csr_ptr
from ..native import core
from ..schedule.ir import Schedule
from ..cell.ir import CellPlan
from ..spec.ops import set_reduction_of
from ..spec.program import Program, Shape
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


def arena_of_shape(arena_shapes: tuple[Shape, ...], shape: Shape) -> int:
    """The arena of values of `shape` in a layout of `arena_shapes`, or -1."""
    try:
        return arena_shapes.index(tuple(shape))
    except ValueError:
        return -1


@dataclass(frozen=True, eq=False)
class OperandTable:
    """How every float operand of every batch is served, for the whole schedule at once.

    Entry `i` is operand `position[i]` of batch `batch[i]`, batch-major, `rows_read[i]` rows. Gather
    rows are a CSR: entry i's rows are `rows[ptr[i]:ptr[i+1]]` (empty unless a gather).
    """

    batch: np.ndarray
    position: np.ndarray
    kind: np.ndarray  # VIEW, BROADCAST or GATHER codes (`KIND_CODES`)
    arena: np.ndarray  # -1: zeros of a shape no arena holds
    first_row: np.ndarray
    rows_read: np.ndarray  # rows of the operand: the batch's size, or a set reduction's arguments
    nbytes: np.ndarray
    ptr: np.ndarray
    rows: np.ndarray
    VIEW_CODE: ClassVar[int] = 0  # the codes of `kind`, as `KINDS` orders them
    BROADCAST_CODE: ClassVar[int] = 1
    GATHER_CODE: ClassVar[int] = 2

    def operand(self, i: int) -> "BatchOperand":
        kind = KINDS[self.kind[i]]
        rows = self.rows[self.ptr[i]:self.ptr[i + 1]] if kind == GATHER else self.first_row[i:i + 1]
        return BatchOperand(kind, int(self.arena[i]), rows, int(self.nbytes[i]))


KINDS = (VIEW, BROADCAST, GATHER)
VIEW_CODE, BROADCAST_CODE, GATHER_CODE = OperandTable.VIEW_CODE, OperandTable.BROADCAST_CODE, OperandTable.GATHER_CODE


def operand_table(graph: Graph, schedule: Schedule, layout: Layout) -> OperandTable:
    """Classify every batch operand (native: `operand_table`, one pass over the batches). A set
    reduction's batch has one operand: every argument of its nodes, node after node."""
    *columns, bad_batch, bad_position = core().operand_table(
        schedule.ptr, schedule.nodes, schedule.batch_type, graph.arg_ptr, graph.arg_node, graph.arg_slot,
        graph.value_ptr, layout.value_arena, layout.value_row, layout.arena_rows,
        *_type_inputs(graph.types, layout.arena_shapes))
    if bad_batch >= 0:
        raise VerificationError(f"batch {bad_batch}: operand {bad_position} is not in the arena of its shape")
    return OperandTable(*columns)


@lru_cache(maxsize=64)
def _type_inputs(types: tuple, arena_shapes: tuple) -> tuple[np.ndarray, ...]:
    """What `operand_table` needs of the node types, per type: whether it is a set reduction (its one
    operand: every argument), and its float inputs' CSR, arenas and row bytes (a model's types and
    arena shapes are the same from one mini-batch to the next)."""
    is_set = np.zeros(len(types), dtype=np.int8)
    input_arena, input_row_bytes, input_counts = [], [], []
    for t, node_type in enumerate(types):
        program = node_type.program
        inputs = [program.values[v].shape for v in program.float_inputs] if program is not None else []
        if inputs and set_reduction_of(program) is not None:
            is_set[t], inputs = 1, inputs[:1]
        input_counts.append(len(inputs))
        input_arena += [arena_of_shape(arena_shapes, shape) for shape in inputs]
        input_row_bytes += [prod(shape) * 4 for shape in inputs]
    return (is_set, csr_ptr(np.array(input_counts, dtype=np.int64)), np.array(input_arena, dtype=np.int32),
            np.array(input_row_bytes, dtype=np.int64))


def verify_operands(table: OperandTable, schedule: Schedule) -> None:
    """Raise `VerificationError` unless `table` is a well-formed operand table of `schedule`'s
    batches: aligned columns, batch-major entries, known kinds, and gather rows exactly where the
    kind is a gather."""
    n = len(table.batch)
    columns = (table.position, table.kind, table.arena, table.first_row, table.rows_read, table.nbytes)
    if any(len(c) != n for c in columns) or len(table.ptr) != n + 1 or table.ptr[0] != 0 \
            or table.ptr[-1] != len(table.rows):
        raise VerificationError("operand table: its columns and row index disagree")
    if n and (np.any(np.diff(table.batch) < 0) or table.batch[0] < 0 or table.batch[-1] >= schedule.num_batches):
        raise VerificationError("operand table: entries are not batch-major over the schedule's batches")
    listed = np.diff(table.ptr)
    bad = np.flatnonzero((table.kind < 0) | (table.kind >= len(KINDS))
                         | np.where(table.kind == GATHER_CODE, listed != table.rows_read, listed != 0))
    if len(bad):
        i = int(bad[0])
        raise VerificationError(f"operand table: batch {table.batch[i]} operand {table.position[i]} is kind "
                                f"{table.kind[i]} with {listed[i]} gather rows listed for {table.rows_read[i]} read")


def format_operands(table: OperandTable, max_batches: int | None = 40) -> str:
    """One line per batch: how each operand is served (a gather with its row count)."""
    lines = []
    for b in np.unique(table.batch).tolist()[:max_batches]:
        entries = np.flatnonzero(table.batch == b).tolist()
        served = [f"{KINDS[table.kind[i]]} {table.rows_read[i]}" if table.kind[i] == GATHER_CODE
                  else KINDS[table.kind[i]] for i in entries]
        lines.append(f"batch {b}: {', '.join(served)}")
    return "\n".join(lines)


def batch_operands(graph: Graph, schedule: Schedule, layout: Layout, b: int) -> list[BatchOperand]:
    """The float operands of batch `b`, in the order of its program's float inputs."""
    table = operand_table(graph, schedule, layout)
    return [table.operand(i) for i in np.flatnonzero(table.batch == b).tolist()]


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
        if set_reduction_of(program) is not None:
            continue  # its set is no request of the planner's (`operand_requests`)
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


def memory_stats(graph: Graph, schedule: Schedule, layout: Layout, plans: dict[Program, CellPlan],
                 table: OperandTable | None = None) -> MemoryStats:
    """Gathers and bytes of one compiled mini-batch; `plans`: the cell plans of (at least) the
    programs its batches run."""
    table = operand_table(graph, schedule, layout) if table is None else table
    gathered = table.kind == GATHER_CODE
    # A set reduction has no cell: its kernel is one call (`SetKernel`).
    calls = np.array([len(plans[t.program].steps) if t.program in plans else
                      int(set_reduction_of(t.program) is not None) for t in graph.types])
    used = {graph.types[t].program for t in np.unique(schedule.batch_type)}
    return MemoryStats(int(gathered.sum()), int(table.nbytes[gathered].sum()), int(table.nbytes.sum()),
                       int(calls[schedule.batch_type].sum()), sum(plans[p].stacked_weights for p in used if p in plans))


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
