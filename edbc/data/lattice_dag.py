"""Seeded lattice-like typed DAGs at op level: a family of graphs to train and test policies on.

Each lattice has a state per character position. A character arc runs a
character cell from the previous state; word arcs of two kinds (short: 2
characters, long: 3 or 4) run their own cells from the state where they start;
every word arc ending at a position is folded into its state by a merge cell,
and a tag cell reads every state. A cell is a chain of ops: its own weight op
first (a type per cell kind), then elementwise ops whose types the cells share,
as op-level graphs share `sigmoid(128)` across cells. The graph of a file is
`lattices` such lattices, side by side (a mini-batch).
"""

from __future__ import annotations

import numpy as np

from ..graph.ir import Graph
from .typed_dag import parse_typed_dag

ADD, SIGMOID, MUL, TANH = 1, 2, 3, 4  # shared elementwise op types
# Cell kind -> its op types in chain order (the first one holds the cell's weights).
CELLS = {
    "char": (5, ADD, SIGMOID, MUL),
    "short": (6, ADD, SIGMOID, TANH, MUL),
    "long": (7, ADD, SIGMOID, TANH, MUL),
    "merge": (8, SIGMOID, MUL, ADD),
    "tag": (9, TANH),
}


# The same lattices at cell level: a node a cell, both word kinds one type.
CELL_LEVEL = {"char": (1,), "short": (2,), "long": (2,), "merge": (3,), "tag": (4,)}


def lattice_dag_text(rng: np.random.Generator, lattices: int = 8, min_len: int = 4, max_len: int = 12,
                     word_prob: float = 0.5, cells: dict[str, tuple[int, ...]] = CELLS) -> str:
    """One graph of `lattices` lattices of `min_len` to `max_len` characters, in the typed DAG format;
    `cells`: each cell kind's op types in chain order (`CELLS`, or `CELL_LEVEL`)."""
    lines: list[str] = []

    def cell(kind: str, first_args: list[int], extra: int | None = None) -> int:
        """The chain of `kind`'s ops; its second op (a lone op: that one) also reads `extra` (a merge's
        arc). Its last node."""
        node = -1
        chain = cells[kind]
        reads_extra = min(1, len(chain) - 1)
        for k, t in enumerate(chain):
            args = (first_args if k == 0 else [node]) + ([extra] if k == reads_extra and extra is not None else [])
            lines.append(" ".join(map(str, [t, len(args), *args])))
            node = len(lines) - 1
        return node

    for _ in range(lattices):
        length = int(rng.integers(min_len, max_len + 1))
        words = [(b, b + span) for b in range(length) for span in (2, 3, 4)
                 if b + span < length and rng.random() < word_prob / 3]
        state: dict[int, int] = {}
        arc: dict[tuple[int, int], int] = {}
        for i in range(length):
            s = cell("char", [state[i - 1]] if i else [])
            for b, e in words:
                if e == i:
                    s = cell("merge", [s], arc[(b, e)])
            state[i] = s
            cell("tag", [s])
            for b, e in words:
                if b == i:
                    arc[(b, e)] = cell("short" if e - b == 2 else "long", [s])
    return f"{len(lines)}\n" + "\n".join(lines) + "\n"


def lattice_dag(rng: np.random.Generator, lattices: int = 8, min_len: int = 4, max_len: int = 12,
                word_prob: float = 0.5, cells: dict[str, tuple[int, ...]] = CELLS) -> Graph:
    return parse_typed_dag(lattice_dag_text(rng, lattices, min_len, max_len, word_prob, cells))
