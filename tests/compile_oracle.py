"""The pure-Python (numpy) implementations that the native compile paths replaced, kept as test
oracles only (`test_compile_native.py`): the native results must equal theirs."""

from __future__ import annotations

from math import prod

import numpy as np

from edbc.errors import VerificationError
from edbc.graph.ir import Graph, csr_gather, csr_ptr
from edbc.memory.layout import Layout, value_owner, value_shapes
from edbc.memory.operands import BROADCAST_CODE, GATHER_CODE, VIEW_CODE, OperandTable, arena_of_shape
from edbc.schedule.ir import Schedule
from edbc.spec.ops import set_reduction_of


def unplanned(graph: Graph, schedule: Schedule) -> tuple[Schedule, Layout]:
    """Memory planning off: each batch's nodes in graph order, each arena filled in run order."""
    owner = np.repeat(np.arange(schedule.num_batches), schedule.sizes)
    in_order = Schedule(schedule.policy, schedule.ptr, schedule.nodes[np.lexsort((schedule.nodes, owner))],
                        schedule.batch_type)
    return in_order, batch_order_layout(graph, in_order)


def batch_order_layout(graph: Graph, schedule: Schedule) -> Layout:
    """Each arena filled in run order, batch by batch, slot by slot."""
    shapes, arena = value_shapes(graph)
    owner, slot = value_owner(graph)
    batch_of = schedule.batch_of_node(graph.num_nodes)
    position = np.empty(graph.num_nodes, dtype=np.int64)
    position[schedule.nodes] = np.arange(len(schedule.nodes)) - np.repeat(schedule.ptr[:-1], schedule.sizes)
    order = np.lexsort((position[owner], slot, batch_of[owner], arena))
    rows_per_arena = np.bincount(arena, minlength=len(shapes))
    first_row = np.concatenate([[0], np.cumsum(rows_per_arena)])[:-1]
    row = np.empty(graph.num_values, dtype=np.int64)
    row[order] = np.arange(graph.num_values) - first_row[arena[order]]
    return Layout("none", tuple(shapes), rows_per_arena, arena, row)


def operand_table(graph: Graph, schedule: Schedule, layout: Layout) -> OperandTable:
    """Every batch operand classified with array operations, one pass per (type, input position)."""
    sizes = schedule.sizes
    parts = []
    for t in np.unique(schedule.batch_type).tolist():
        program = graph.types[t].program
        batches = np.flatnonzero(schedule.batch_type == t)
        pos, seg = csr_gather(schedule.ptr, batches)  # the batches' nodes, batch by batch
        nodes = schedule.nodes[pos]
        if set_reduction_of(program) is not None:
            e, owner = csr_gather(graph.arg_ptr, nodes)
            rows_per_batch = np.bincount(seg[owner], minlength=len(batches))
            operands = [(0, program.float_inputs[0], e, seg[owner], rows_per_batch)]
        else:
            operands = [(p, value, graph.arg_ptr[nodes] + p, seg, sizes[batches])
                        for p, value in enumerate(program.float_inputs)]
        for p, value, e, row_seg, k in operands:
            parts.append(_classify(graph, layout, batches, p, program.values[value].shape, e, row_seg, k))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return OperandTable(empty, empty, empty.astype(np.int8), empty, empty, empty, empty,
                            np.zeros(1, np.int64), empty)
    cols = [np.concatenate(c) for c in zip(*parts)]
    order = np.lexsort((cols[1], cols[0]))
    counts = cols[7]
    ptr_unsorted = csr_ptr(counts)
    rows = cols[8]
    pos, _ = csr_gather(ptr_unsorted, order)
    return OperandTable(cols[0][order], cols[1][order], cols[2][order], cols[3][order], cols[4][order],
                        cols[5][order], cols[6][order], csr_ptr(counts[order]), rows[pos])


def _classify(graph: Graph, layout: Layout, batches: np.ndarray, p: int, shape, e: np.ndarray,
              seg: np.ndarray, k: np.ndarray) -> tuple:
    a = arena_of_shape(layout, shape)
    starts = np.cumsum(k) - k
    producer, slot = graph.arg_node[e], graph.arg_slot[e]
    real = producer >= 0
    values = graph.value_ptr[np.maximum(producer, 0)] + slot
    if np.any(real & (layout.value_arena[values] != a)):
        b = int(batches[seg[np.flatnonzero(real & (layout.value_arena[values] != a))[0]]])
        raise VerificationError(f"batch {b}: operand {p} is not in the arena of its shape")
    zero_row = layout.arena_rows[a] if a >= 0 else 0
    rows = np.where(real, layout.value_row[values], zero_row)
    any_real = np.add.reduceat(real, starts) > 0
    all_real = np.add.reduceat(real, starts) == k
    same_seg = seg[1:] == seg[:-1]
    breaks = np.bincount(seg[1:][same_seg & (rows[1:] != rows[:-1] + 1)], minlength=len(batches))
    differ = np.bincount(seg[np.flatnonzero(rows != rows[starts][seg])], minlength=len(batches))
    first = rows[starts]
    kind = np.full(len(batches), GATHER_CODE, dtype=np.int8)
    kind[differ == 0] = BROADCAST_CODE
    kind[(k == 1) | (all_real & (breaks == 0))] = VIEW_CODE
    kind[~any_real] = BROADCAST_CODE
    first = np.where(~any_real, zero_row, first)
    gathered = kind == GATHER_CODE
    counts = np.where(gathered, k, 0)
    return (batches, np.full(len(batches), p), kind, np.where(any_real | (a >= 0), a, -1),
            first, k, k * prod(shape) * 4, counts, rows[gathered[seg]])
