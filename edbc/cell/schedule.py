"""The schedule inside one cell: its ops in the fewest batches, found exactly.

A cell's ops form a small static DAG, scheduled once ahead of time and
replayed for every batch of calls (`../shared/docs/method.md` §3). The rules
are those of the dynamic level: a step picks a type and runs all its ready ops.
The search is depth-first branch and bound: a state is the set of ops done,
the bound is the lower bound of §1 on the ops left (for each type, the most
ops of that type on one path), and states already reached with no fewer steps
are not searched again.
"""

from __future__ import annotations

import numpy as np

from ..errors import LimitError
from ..spec.ops import OPS, computing_producers, is_alias, op_signature
from ..spec.program import Program, Shape
from .ir import CellSchedule

MAX_OPS = 62  # states are bitmasks of the ops done in one Python int; beyond this the search is not attempted
MAX_EXPANSIONS = 200_000


def batching_signature(program: Program, op, param_shapes: dict[str, Shape]) -> tuple:
    """Ops of one cell with equal signatures may run as one internal batch (`op_signature`, with
    parameters by shape: different ones are stacked once), except embedding tables, whose lookup
    batches only over one table. Ops that are not `batchable`, and affines of matrices, get a
    signature of their own."""
    if not OPS[op.kind].batchable or (op.kind == "affine" and any(
            not isinstance(a, str) and len(program.values[a].shape) != 1 for a in op.args)):
        return ("alone", op.outs)
    return op_signature(program, op, (lambda name: name) if op.kind == "embed"
                        else (lambda name: tuple(param_shapes[name])))


def schedule_program(program: Program, param_shapes: dict[str, Shape], batch_ops: bool = True) -> CellSchedule:
    """The internal schedule of a cell: its computing ops (aliases are column ranges and run
    nowhere) in the fewest batches, or with `batch_ops=False` one op a batch, as an
    unbatched interpreter runs them. Batches hold program op indices."""
    producer = computing_producers(program)
    compute = [j for j, op in enumerate(program.ops) if not is_alias(program, op)]
    index_of = {j: i for i, j in enumerate(compute)}
    signatures: dict[tuple, int] = {}
    types, deps = [], []
    for j in compute:
        op = program.ops[j]
        types.append(signatures.setdefault(batching_signature(program, op, param_shapes), len(signatures)))
        deps.append(tuple(sorted({index_of[producer[a]] for a in op.args
                                  if not isinstance(a, str) and a in producer})))
    sched = schedule_cell(deps, types if batch_ops else list(range(len(types))))
    return CellSchedule(tuple(tuple(compute[i] for i in b) for b in sched.batches), sched.lower_bound, sched.exact)


def schedule_cell(deps: list[tuple[int, ...]], types: list[int]) -> CellSchedule:
    """Batches of ops `0..n-1`; op i needs the ops `deps[i]` (earlier indices) and has type `types[i]`."""
    n = len(types)
    if n > MAX_OPS:
        raise LimitError(f"a cell has {n} ops to schedule; at most {MAX_OPS} are supported")
    if n == 0:
        return CellSchedule((), 0, True)
    kinds = sorted(set(types))
    column = {t: i for i, t in enumerate(kinds)}
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, ds in enumerate(deps):
        for d in ds:
            succ[d].append(i)
    # chain[i, t]: the most type-t ops on one path starting at op i
    chain = np.zeros((n, len(kinds)), dtype=np.int64)
    for i in reversed(range(n)):
        if succ[i]:
            chain[i] = chain[succ[i]].max(axis=0)
        chain[i, column[types[i]]] += 1
    need = [sum(1 << d for d in ds) for ds in deps]
    full = (1 << n) - 1

    def bound(done: int) -> int:
        left = [i for i in range(n) if not done >> i & 1]
        return int(chain[left].max(axis=0).sum()) if left else 0

    def ready_by_type(done: int) -> dict[int, int]:
        groups: dict[int, int] = {}
        for i in range(n):
            if not done >> i & 1 and need[i] & done == need[i]:
                groups[types[i]] = groups.get(types[i], 0) | 1 << i
        return groups

    root_bound = bound(0)
    best: list = [None, n + 1]  # best sequence of batch masks and its length
    seen: dict[int, int] = {}  # state -> fewest steps it was reached with
    expansions = 0
    exact = True

    def search(done: int, steps: list[int]) -> None:
        nonlocal expansions, exact
        if done == full:
            if len(steps) < best[1]:
                best[0], best[1] = list(steps), len(steps)
            return
        if len(steps) + bound(done) >= best[1] or seen.get(done, n + 1) <= len(steps):
            return
        seen[done] = len(steps)
        expansions += 1
        if expansions > MAX_EXPANSIONS:
            exact = False
            return
        groups = ready_by_type(done)
        # larger batches first: finds a good schedule early, so the bound prunes sooner
        for mask in sorted(groups.values(), key=lambda m: -bin(m).count("1")):
            steps.append(mask)
            search(done | mask, steps)
            steps.pop()
            if best[1] == root_bound:
                return

    search(0, [])
    batches = tuple(tuple(i for i in range(n) if mask >> i & 1) for mask in best[0])
    return CellSchedule(batches, root_bound, exact)
