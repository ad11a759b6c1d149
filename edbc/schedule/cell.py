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

from dataclasses import dataclass

import numpy as np

from ..errors import LimitError

MAX_OPS = 62  # states are bitmasks of the ops done in one Python int; beyond this the search is not attempted
MAX_EXPANSIONS = 200_000


@dataclass(frozen=True)
class CellSchedule:
    batches: tuple[tuple[int, ...], ...]  # op indices per batch, each batch in program order
    lower_bound: int
    exact: bool  # False when the search stopped at MAX_EXPANSIONS with the best schedule so far


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
