"""PQ memory planning of a whole compiled mini-batch (`--memory pq`).

Constraints per arena, as in the method (`../shared/docs/method.md` §4), but over every batch
of the mini-batch rather than inside one cell: the outputs of a batch slot are
consecutive rows (a hard invariant of `Layout`); each operand of a batch should
be consecutive rows aligned with the batch. Operands become `Request`s, larger
ones first; `edbc.memory.align` chooses the node order inside every batch and
the blocks that must sit side by side. The planner then reorders the nodes
within each batch of the schedule (same sets, so the schedule stays valid) and
lays every arena out block by block.

Operands that read zeros, one shared value (broadcast), a repeated value or
values of several shapes are not requests: the runtime serves the first two
without a copy and must gather the others anyway.
"""

from __future__ import annotations

from functools import lru_cache
from math import prod

import numpy as np

from ..graph.ir import Graph, csr_gather
from ..native import core
from ..schedule.ir import Schedule
from ..spec.ops import OPS, is_alias, set_reduction_of
from ..spec.program import Program
from .align import Request, solve_orders
from .layout import Layout, output_arenas, value_owner, value_shapes


def position_in_batch(schedule: Schedule, num_nodes: int) -> np.ndarray:
    position = np.empty(num_nodes, dtype=np.int64)
    position[schedule.nodes] = np.arange(len(schedule.nodes)) - np.repeat(schedule.ptr[:-1], schedule.sizes)
    return position


def operand_requests(graph: Graph, schedule: Schedule) -> list[Request]:
    """One request per batch operand that a layout could serve as a view.

    Operands with the same producers (e.g. `h_l` and `c_l` of a TreeLSTM node)
    are one request of their summed bytes: they are served by the same order.
    The batches of a type are classified together, one input position at a time.
    """
    batch_of = schedule.batch_of_node(graph.num_nodes)
    position = position_in_batch(schedule, graph.num_nodes)
    width = int(graph.num_outputs_per_type.max(initial=1))
    found: list[tuple[int, int, Request]] = []  # (consumer, input position, request)
    for t in np.unique(schedule.batch_type).tolist():
        program = graph.types[t].program
        batches = np.flatnonzero((schedule.batch_type == t) & (schedule.sizes >= 2))
        # A set reduction reads a set a node, of any size; ordering whole sets is left to future work:
        # its operand is a view only where the sets already lie in order (an edge batch's outputs do).
        if program is None or not program.float_inputs or not batches.size or set_reduction_of(program):
            continue
        pos, seg = csr_gather(schedule.ptr, batches)
        nodes = schedule.nodes[pos]
        k = schedule.sizes[batches]
        starts = np.cumsum(k) - k
        producers, slots, usable, weights, partial = [], [], [], [], []
        for p, value in enumerate(program.float_inputs):
            e = graph.arg_ptr[nodes] + p
            producer, slot = graph.arg_node[e].astype(np.int64), graph.arg_slot[e].astype(np.int64)
            low, high = np.minimum.reduceat(producer, starts), np.maximum.reduceat(producer, starts)
            ok = (low >= 0) & (high != low)  # real values, not all one value
            twice, short = _block_reads(schedule, seg, batch_of[producer] * width + slot, position[producer],
                                        width, len(batches))
            ok[twice] = False  # ... and none read twice in a batch
            partial.append(short)
            producers.append(producer)
            slots.append(slot)
            usable.append(ok)
            weights.append(k * prod(program.values[value].shape) * 4)
        # A position whose producers equal an earlier position's adds its bytes to that request.
        owner = [np.where(usable[p], p, -1) for p in range(len(producers))]
        for p in range(len(producers)):
            for q in range(p):
                same = np.add.reduceat((producers[q] == producers[p]).astype(np.int64), starts) == k
                owner[p][(owner[p] == p) & (owner[q] == q) & same] = q
        total = [np.zeros(len(batches), dtype=np.int64) for _ in producers]
        for p in range(len(producers)):
            for q in range(p + 1):
                total[q] += np.where(owner[p] == q, weights[p], 0)
        bounds, consumer = np.append(starts, len(nodes)).tolist(), batches.tolist()
        for p in range(len(producers)):
            kept = np.flatnonzero(owner[p] == p).tolist()
            if not kept:
                continue
            batch, index = batch_of[producers[p]], position[producers[p]]
            block = batch * width + slots[p]
            weight, part = total[p].tolist(), partial[p].tolist()
            for i in kept:  # slices of the arrays above: views, no copy per request
                lo, hi = bounds[i], bounds[i + 1]
                found.append((consumer[i], p, Request(consumer[i], batch[lo:hi], index[lo:hi], block[lo:hi],
                                                      weight[i], part[i])))
    found.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in found]


def _block_reads(schedule: Schedule, seg: np.ndarray, block: np.ndarray, index: np.ndarray,
                 width: int, consumers: int) -> tuple[np.ndarray, np.ndarray]:
    """Row `j` of consumer batch `seg[j]` (of `consumers`) reads row `index[j]` of memory block `block[j]`.

    Returns the consumer batches that read some value twice, and per consumer batch
    whether it reads fewer rows of some block than the block holds (such an
    operand is never a composite). One sort of (consumer, block, row) keys.
    """
    span = schedule.num_batches * width
    rows = int(schedule.sizes.max(initial=1))
    keys = np.sort((seg * span + block) * rows + index)
    twice = keys[1:][keys[1:] == keys[:-1]] // (span * rows)
    pairs = keys // rows
    first = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
    run = pairs[first]
    short = np.diff(np.append(first, len(keys))) < schedule.sizes[run % span // width]
    return twice, np.bincount(run // span, weights=short, minlength=consumers) > 0


def pq_layout(graph: Graph, schedule: Schedule) -> tuple[Schedule, Layout]:
    """Plan the node order of every batch and the block order of every arena."""
    solved = solve_orders(schedule.sizes, operand_requests(graph, schedule))
    nodes = np.concatenate([schedule.batch(b)[o] for b, o in enumerate(solved.orders)]) \
        if schedule.num_batches else schedule.nodes
    planned = Schedule(schedule.policy, schedule.ptr, nodes, schedule.batch_type)
    return planned, blocks_layout(graph, planned, "pq", solved.chains)


def blocks_layout(graph: Graph, schedule: Schedule, mode: str, chains: list[list[int]] = ()) -> Layout:
    """Arenas filled block by block (a block: one batch's outputs of one slot, in batch order).

    Blocks go in run order, slot by slot, except that each chain's blocks are
    placed together, in chain order, where its first block would stand.
    """
    shapes, arena = value_shapes(graph)
    owner, slot = value_owner(graph)
    width = int(graph.num_outputs_per_type.max(initial=1))
    batch_of = schedule.batch_of_node(graph.num_nodes)
    position = position_in_batch(schedule, graph.num_nodes)
    block = batch_of[owner] * width + slot
    blocks, first = np.unique(block, return_index=True)
    block_arena = arena[first]
    block_size = schedule.sizes[blocks // width]

    rank = np.arange(len(blocks))
    if chains:
        where = {int(b): i for i, b in enumerate(blocks)}
        nxt = {where[a]: where[b] for chain in chains for a, b in zip(chain, chain[1:])}
        has_prev = set(nxt.values())
        sequence = []
        for i in range(len(blocks)):
            if i in has_prev:
                continue
            while True:
                sequence.append(i)
                if i not in nxt:
                    break
                i = nxt[i]
        rank = np.empty(len(blocks), dtype=np.int64)
        rank[sequence] = np.arange(len(blocks))
    order = np.lexsort((rank, block_arena))  # blocks by arena, then by rank
    start = np.zeros(len(blocks), dtype=np.int64)
    sizes = block_size[order]
    arena_sorted = block_arena[order]
    cumulative = np.cumsum(sizes) - sizes
    arena_first = np.searchsorted(arena_sorted, arena_sorted)  # first block of the same arena
    start[order] = cumulative - cumulative[arena_first]
    rows_per_arena = np.bincount(arena, minlength=len(shapes))
    row = start[np.searchsorted(blocks, block)] + position[owner]
    return Layout(mode, tuple(shapes), rows_per_arena, arena, row)


def unplanned(graph: Graph, schedule: Schedule) -> tuple[Schedule, Layout]:
    """Memory planning off: each batch's nodes in graph order (as policies give them), each
    arena filled in run order, batch by batch, slot by slot (native: `unplanned_layout`)."""
    shapes, slot_arena = output_arenas(graph)
    nodes, arena, row, rows_per_arena = core().unplanned_layout(
        schedule.ptr, schedule.nodes, graph.node_type, graph.value_ptr, slot_arena, len(shapes))
    return Schedule(schedule.policy, schedule.ptr, nodes, schedule.batch_type), \
        Layout("none", tuple(shapes), rows_per_arena, arena, row)


# Memory mode -> planner: (graph, schedule) -> (the schedule, its nodes possibly reordered
# within batches; the layout).
PLANNERS = {"pq": pq_layout, "none": unplanned}

# The cost model of `pq` where a mini-batch runs a known number of times (`edbc run`, `eval`, `train`;
# plans compiled ahead of time are always planned). A layout only turns gathers into views, so planning
# pays when what the unplanned layout's gathers cost over those runs exceeds what planning costs. Both
# are linear fits measured on the CPU this project runs on, 1 thread (`python scripts/bench_memory.py
# --cost-model`): an index_select of 16-64 rows of 128 floats took 2-4 us; pq planning took 1.7-32 ms
# a mini-batch of 64 (TreeLSTM 23 batches, tagger 145, lattice LSTM 664, agenda), about 1 ms + 30 us a
# batch. The saving measured was 0.12, 0.38 and 4.3 ms a run: the gathers' cost is set high enough to
# bound it (4 us + 0.1 ns a byte gives 0.5, 0.8 and 4.0 ms), since the planner removes gathers only.
GATHER_S = 4e-6
GATHER_BYTE_S = 1e-10
PLAN_S = 1e-3
PLAN_BATCH_S = 3e-5


def copied_inputs(program: Program) -> np.ndarray:
    """Per float input of a node type: whether the CPU replay copies its gathered rows (bool). The
    fused elementwise passes, the row-by-row matrix products and set reductions read gathered rows
    where they are (`csrc/replay.cpp`); GEMMs over the whole batch (affines, a parameter matrix
    times vectors), embeddings, softmaxes and outputs that are inputs need them copied together."""
    if set_reduction_of(program) is not None:
        return np.zeros(len(program.float_inputs), dtype=bool)
    readers: dict[int, list] = {}
    for op in program.ops:
        for a in op.args:
            if not isinstance(a, str):
                readers.setdefault(a, []).append(op)

    def copied(v: int) -> bool:
        if v in program.outputs:
            return True
        for op in readers.get(v, []):
            if is_alias(program, op):
                if any(copied(out) for out in op.outs):
                    return True
            elif not (OPS[op.kind].elementwise or op.kind == "matmul"
                      or (op.kind == "matvec" and not isinstance(op.args[0], str))):
                return True
        return False
    return np.array([copied(v) for v in program.float_inputs], dtype=bool)


def gathers_cost(table, graph: Graph, schedule: Schedule) -> float:
    """Seconds a run spends on the gathers of an operand table (`edbc.memory.operands.OperandTable`),
    by the cost model: what planning could save at most. Gathers read in place cost nothing."""
    copies = _copied_table(graph.types)
    gathered = (table.kind == table.GATHER_CODE) & copies[schedule.batch_type[table.batch], table.position]
    return GATHER_S * int(gathered.sum()) + GATHER_BYTE_S * int(table.nbytes[gathered].sum())


@lru_cache(maxsize=64)
def _copied_table(types: tuple) -> np.ndarray:
    """`copied_inputs` of every node type, as a [type, input position] table (a model's types are
    the same objects from one mini-batch to the next)."""
    rows = [copied_inputs(t.program) if t.program is not None else np.zeros(0, dtype=bool) for t in types]
    table = np.zeros((len(rows), max((len(r) for r in rows), default=0) + 1), dtype=bool)
    for t, r in enumerate(rows):
        table[t, :len(r)] = r
    return table


def planning_cost(num_batches: int) -> float:
    """Seconds pq planning of a mini-batch of `num_batches` batches takes, by the cost model."""
    return PLAN_S + PLAN_BATCH_S * num_batches


def planning_pays(table, graph: Graph, schedule: Schedule, runs: int) -> bool:
    """Whether pq planning is worth its cost for a mini-batch run `runs` times, given the operand
    table of its unplanned layout."""
    return runs * gathers_cost(table, graph, schedule) > planning_cost(schedule.num_batches)
