"""Memory planning inside a cell: its internal batches and where their tensors live.

A cell's ops are batched once (`edbc.schedule.cell`); a kernel then replays
those internal batches for `k` calls. Inside a kernel every tensor is a
`[k, width]` row per call (the cell's memory, repeated for each call): an
internal batch of `m` ops writes each output slot as one such tensor, its
r-th op's value in the r-th run of columns, and ops that only cut a tensor
(`chunk`, `split`) are column ranges of their input. So every value is a
column range of a *base* (a cell input or a batch output). A batched op wants
each operand as one run of columns holding its `m` values in its ops' order;
the order of the ops inside every internal batch decides which operands are.
With `pq` those orders come from `edbc.memory.align` (the method's §4 inside
cells: outputs consecutive, operand sets consecutive and aligned, larger
first); with `none` every internal batch keeps program order.

Operand kinds, as the kernel serves them:
  VALUE      one op: the value itself
  VIEW       the m values side by side in one base, in order (a view)
  BROADCAST  the same value for every op (an expanded view)
  GATHER     anything else: it would be a copy at run time, so the planner runs
             such a batch op by op instead; plans it returns have none
  SHARED     one parameter for every op
  STACKED    different parameters, stacked once when the kernel is built
  TOKENS     token inputs (stacked ids; no float copy)
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from ..spec.passes import optimize
from ..spec.program import TOKEN, Program, Shape
from ..schedule.cell import CellSchedule, schedule_cell
from .align import Request, solve_orders

# Ops whose batch of m runs on `[k, m, ...]` operands as one call (the others run one by one).
BATCHABLE = frozenset({"add", "sub", "mul", "sum", "addcmul", "lerp", "sigmoid", "tanh", "relu", "identity",
                       "log_softmax", "concat", "affine", "embed"})


def is_alias(program: Program, op) -> bool:
    """Ops that only re-read their input's memory: `reshape`, and `chunk`/`split` of a vector
    (their pieces are column ranges of it; of a matrix they are not)."""
    if op.kind == "reshape":
        return True
    return op.kind in ("chunk", "split") and len(program.values[op.args[0]].shape) == 1
VALUE, VIEW, BROADCAST, GATHER, SHARED, STACKED, TOKENS = range(7)
KIND_NAMES = ("value", "view", "broadcast", "gather", "shared", "stacked", "tokens")


@dataclass(frozen=True)
class Home:
    """Where a value lives inside the kernel: columns `start:start+size` of base `base`.

    Bases are numbered: the cell inputs first, then the output slots of the
    internal batches in run order (`CellPlan.base_of`)."""

    base: int
    start: int
    size: int


@dataclass(frozen=True)
class Operand:
    kind: int
    values: tuple  # value ids, or parameter names for SHARED/STACKED
    base: int = -1  # VIEW: the base holding the values
    start: int = 0  # VIEW: their first column


@dataclass(frozen=True)
class Step:
    """One internal batch: ops (program op indices) in memory order, one operand per argument."""

    ops: tuple[int, ...]
    operands: tuple[Operand, ...]


@dataclass(frozen=True)
class CellPlan:
    program: Program
    memory: str
    schedule: CellSchedule
    steps: tuple[Step, ...]
    homes: tuple[Home, ...]  # per value of the program
    base_of: dict  # (step, output slot) -> base number

    @property
    def stacked_weights(self) -> int:
        """Parameter operands stacked once when the kernel is built."""
        return sum(o.kind == STACKED for s in self.steps for o in s.operands)


def format_cell_plan(plan: CellPlan) -> str:
    """The printer of a cell plan: its internal batches in run order and how operands are served."""
    program = plan.program
    lines = [f"  {len(plan.steps)} internal batches ({plan.memory} layout; the exact schedule has "
             f"{len(plan.schedule.batches)}, lower bound {plan.schedule.lower_bound})"]
    for s in plan.steps:
        op = program.ops[s.ops[0]]
        outs = ", ".join(program.values[program.ops[j].outs[0]].name for j in s.ops)
        kinds = ", ".join(KIND_NAMES[o.kind] for o in s.operands)
        lines.append(f"    {op.kind} x{len(s.ops)} -> {outs}  [{kinds}]")
    return "\n".join(lines)


def batching_signature(program: Program, op, param_shapes: dict[str, Shape]) -> tuple:
    """Ops with equal signatures may run as one batch: same kind, attributes and operand
    shapes. Parameters count by shape (different ones are stacked once), except
    embedding tables, whose lookup batches only over one table. Ops outside
    `BATCHABLE`, and affines of matrices, get a signature of their own."""
    if op.kind not in BATCHABLE or (op.kind == "affine" and any(
            not isinstance(a, str) and len(program.values[a].shape) != 1 for a in op.args)):
        return ("alone", op.outs)
    args = []
    for a in op.args:
        if isinstance(a, str):
            args.append(("p", a) if op.kind == "embed" else ("p", tuple(param_shapes[a])))
        else:
            args.append(("v", program.values[a].shape, program.values[a].dtype))
    return (op.kind, tuple(args), op.attrs)


def plan_cell(program: Program, param_shapes: dict[str, Shape], memory: str = "pq",
              batch_ops: bool = True) -> CellPlan:
    """The cell plan of `program`: its internal schedule (the fewest batches, or with
    `batch_ops=False` one op a batch, as an unbatched interpreter runs it) and the order of
    the ops in each batch (planned for `memory="pq"`, program order for `"none"`)."""
    made_by: dict[int, tuple[int, int]] = {}  # value -> (op, output position)
    for j, op in enumerate(program.ops):
        for k, v in enumerate(op.outs):
            made_by[v] = (j, k)
    compute = [j for j, op in enumerate(program.ops) if not is_alias(program, op)]
    index_of = {j: i for i, j in enumerate(compute)}

    def producer(v: int) -> int | None:
        """The computing op a value comes from, through slices; None for cell inputs."""
        while v in made_by:
            j = made_by[v][0]
            if not is_alias(program, program.ops[j]):
                return j
            v = program.ops[j].args[0]
        return None

    signatures: dict[tuple, int] = {}
    types, deps = [], []
    for j in compute:
        op = program.ops[j]
        types.append(signatures.setdefault(batching_signature(program, op, param_shapes), len(signatures)))
        deps.append(tuple(sorted({index_of[p] for a in op.args if not isinstance(a, str)
                                  for p in [producer(a)] if p is not None})))
    sched = schedule_cell(deps, types if batch_ops else list(range(len(types))))
    batches = [[compute[i] for i in b] for b in sched.batches]
    if memory == "pq":
        batches = _planned_orders(program, batches, made_by)
    while True:
        homes, base_of = _homes(program, batches)
        steps = [Step(tuple(b), tuple(_operand(program, b, pos, homes) for pos in range(len(program.ops[b[0]].args))))
                 for b in batches]
        # A batch whose operand would be gathered runs its ops one by one instead: on the
        # measured CPU kernels the copy costs more than the calls it saves. Splitting can
        # break views of later batches, so repeat until every batch of several ops is views.
        split = [i for i, st in enumerate(steps) if len(st.ops) > 1 and any(o.kind == GATHER for o in st.operands)]
        if not split:
            return CellPlan(program, memory, sched, tuple(steps), homes, base_of)
        batches = [part for i, b in enumerate(batches) for part in ([[j] for j in b] if i in split else [b])]


def plan_kernel(program: Program, param_shapes: dict[str, Shape], memory: str = "pq"):
    """What a kernel runs: the program rewritten by `edbc.spec.passes`, the parameters it
    derives (name -> `Derived`), and the cell plan of the rewritten program."""
    optimized, derived = optimize(program, param_shapes)
    shapes = dict(param_shapes, **{name: d.shape for name, d in derived.items()})
    return optimized, derived, plan_cell(optimized, shapes, memory)


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


def _operand(program: Program, ops: list[int], pos: int, homes) -> Operand:
    args = [program.ops[j].args[pos] for j in ops]
    first = args[0]
    if isinstance(first, str):
        return Operand(SHARED if len(set(args)) == 1 else STACKED, tuple(args))
    if len(args) == 1:
        return Operand(VALUE, tuple(args))
    if program.values[first].dtype == TOKEN:
        return Operand(TOKENS, tuple(args))
    if len(set(args)) == 1:
        return Operand(BROADCAST, tuple(args))
    h = [homes[v] for v in args]
    if all(x.base == h[0].base and x.start == h[0].start + i * h[0].size for i, x in enumerate(h)):
        return Operand(VIEW, tuple(args), base=h[0].base, start=h[0].start)
    return Operand(GATHER, tuple(args))
