"""Memory planning inside a cell: the order of the ops in each internal batch, and where values live.

A batched op wants each operand as one run of columns holding its `m` values
in its ops' order (see `ir`); the order of the ops inside every internal batch
decides which operands are. With `pq` those orders come from
`edbc.memory.align` (the method's §4 inside cells: outputs consecutive,
operand sets consecutive and aligned, larger first); with `none` every
internal batch keeps program order. A batch whose operand would still be a
copy runs its ops one by one.
"""

from __future__ import annotations

from math import prod

import numpy as np

from ..memory.align import Request, solve_orders
from ..spec.ops import is_alias
from ..spec.program import TOKEN, Program
from .ir import BROADCAST, GATHER, SHARED, STACKED, TOKENS, VALUE, VIEW, CellPlan, CellSchedule, Home, Step, StepOperand


def plan_layout(program: Program, schedule: CellSchedule, memory: str) -> CellPlan:
    """The cell plan: the schedule's batches ordered for `memory` ("pq" plans the orders,
    "none" keeps program order), homes of every value, and how each operand is served."""
    batches = [list(b) for b in schedule.batches]
    if memory == "pq":
        made_by = {v: (j, k) for j, op in enumerate(program.ops) for k, v in enumerate(op.outs)}
        batches = _planned_orders(program, batches, made_by)
    while True:
        plan = plan_of_steps(program, memory, schedule, batches)
        # A batch whose operand would be gathered runs its ops one by one instead: on the
        # measured CPU kernels the copy costs more than the calls it saves. Splitting can
        # break views of later batches, so repeat until every batch of several ops is views.
        split = {i for i, st in enumerate(plan.steps) if len(st.ops) > 1 and any(o.kind == GATHER for o in st.operands)}
        if not split:
            return plan
        batches = [part for i, b in enumerate(batches) for part in ([[j] for j in b] if i in split else [b])]


def plan_of_steps(program: Program, memory: str, schedule: CellSchedule, batches) -> CellPlan:
    """The plan that runs `batches` (op indices, in memory order) as they are: homes and operands."""
    homes, base_of = _homes(program, batches)
    steps = tuple(Step(tuple(b), tuple(_operand(program, b, pos, homes) for pos in range(len(program.ops[b[0]].args))))
                  for b in batches)
    return CellPlan(program, memory, schedule, steps, homes, base_of)


def _planned_orders(program: Program, batches: list[list[int]], made_by) -> list[list[int]]:
    """Order every internal batch so that operands are aligned blocks (see `edbc.memory.align`).

    Producers are the internal batches plus one fixed pseudo-batch per slicing op,
    whose nodes are its pieces in column order.
    """
    where: dict[int, tuple[int, int]] = {}  # computing op -> (batch, index)
    for b, ops in enumerate(batches):
        for i, j in enumerate(ops):
            where[j] = (b, i)
    piece: dict[int, tuple[int, int]] = {}  # sliced value -> (pseudo-batch, piece)
    sizes = [len(b) for b in batches]
    fixed = [False] * len(batches)
    for j, op in enumerate(program.ops):
        if is_alias(program, op):
            for q, v in enumerate(op.outs):
                piece[v] = (len(sizes), q)
            sizes.append(len(op.outs))
            fixed.append(True)
    width = max(len(op.outs) for op in program.ops)
    requests = []
    for c, ops in enumerate(batches):
        if len(ops) < 2:
            continue
        for pos, a in enumerate(program.ops[ops[0]].args):
            if isinstance(a, str):
                continue
            vals = [program.ops[j].args[pos] for j in ops]
            if len(set(vals)) < len(vals) or program.values[a].dtype == TOKEN:
                continue
            src = []
            for v in vals:
                if v in piece:
                    src.append((piece[v][0], piece[v][1], 0))
                elif v in made_by:
                    j, k = made_by[v]
                    src.append((where[j][0], where[j][1], k))
                else:
                    break  # a cell input: outside the kernel's memory
            else:
                if len(set((s[0], s[2]) for s in src)) > 1:
                    continue  # several tensors: separate allocations are never adjacent
                batch = np.array([s[0] for s in src], dtype=np.int64)
                index = np.array([s[1] for s in src], dtype=np.int64)
                block = batch * width + np.array([s[2] for s in src], dtype=np.int64)
                weight = len(ops) * prod(program.values[a].shape) * 4
                requests.append(Request(c, batch, index, block, weight))
    solved = solve_orders(sizes, requests, fixed)
    return [[ops[i] for i in solved.orders[b]] for b, ops in enumerate(batches)]


def _homes(program: Program, batches: list[list[int]]) -> tuple[tuple[Home, ...], dict]:
    homes: list[Home | None] = [None] * len(program.values)
    for i in range(program.n_inputs):
        homes[i] = Home(i, 0, prod(program.values[i].shape))
    base_of = {}
    for b, ops in enumerate(batches):
        for k, v in enumerate(program.ops[ops[0]].outs):
            base_of[(b, k)] = program.n_inputs + len(base_of)
        for r, j in enumerate(ops):
            for k, v in enumerate(program.ops[j].outs):
                size = prod(program.values[v].shape)
                homes[v] = Home(base_of[(b, k)], r * size, size)
    for op in program.ops:  # in program order, so a sliced value already has its home
        if is_alias(program, op):
            whole = homes[op.args[0]]
            start = whole.start
            for v in op.outs:
                size = prod(program.values[v].shape)
                homes[v] = Home(whole.base, start, size)
                start += size
    return tuple(homes), base_of


def _operand(program: Program, ops: list[int], pos: int, homes) -> StepOperand:
    args = [program.ops[j].args[pos] for j in ops]
    first = args[0]
    if isinstance(first, str):
        return StepOperand(SHARED if len(set(args)) == 1 else STACKED, tuple(args))
    if len(args) == 1:
        return StepOperand(VALUE, tuple(args))
    if program.values[first].dtype == TOKEN:
        return StepOperand(TOKENS, tuple(args))
    if len(set(args)) == 1:
        return StepOperand(BROADCAST, tuple(args))
    h = [homes[v] for v in args]
    if all(x.base == h[0].base and x.start == h[0].start + i * h[0].size for i, x in enumerate(h)):
        return StepOperand(VIEW, tuple(args), base=h[0].base, start=h[0].start)
    return StepOperand(GATHER, tuple(args))
