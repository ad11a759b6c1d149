"""The memory layout IR: where every value of a scheduled graph lives.

Values of one shape share an arena, a `[rows + 1, *shape]` tensor whose last
row stays zero (arguments -1 read it). A batch writes each output slot into
consecutive rows, in the batch's node order, so outputs are written in place.
An operand is a view when its rows are consecutive and in the same order as
the batch's nodes; otherwise the runtime gathers it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import VerificationError
from ..graph.ir import Graph
from ..spec.program import Shape
from ..schedule.ir import Schedule


class Layout:
    __slots__ = ("mode", "arena_shapes", "arena_rows", "value_arena", "value_row")

    def __init__(self, mode: str, arena_shapes: tuple[Shape, ...], arena_rows, value_arena, value_row):
        self.mode = mode
        self.arena_shapes = tuple(tuple(s) for s in arena_shapes)
        self.arena_rows = np.ascontiguousarray(arena_rows, dtype=np.int64)
        self.value_arena = np.ascontiguousarray(value_arena, dtype=np.int32)
        self.value_row = np.ascontiguousarray(value_row, dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"arena_rows": self.arena_rows, "value_arena": self.value_arena, "value_row": self.value_row}


def output_arenas(graph: Graph) -> tuple[list[Shape], np.ndarray]:
    """Distinct output shapes of the types that have nodes (an arena per shape, none left empty), and
    per type the index of each output slot's shape (-1 past its outputs, and for types without
    nodes: lowering to ops can leave a type no node has), int32 [types, most outputs]."""
    present = np.bincount(graph.node_type, minlength=len(graph.types)) > 0
    shapes, table = _output_arenas(graph.types, present.tobytes())
    return list(shapes), table


@lru_cache(maxsize=64)
def _output_arenas(types: tuple, present: bytes) -> tuple[tuple[Shape, ...], np.ndarray]:
    """`output_arenas` of a model's types, `present` saying which have nodes (one byte a type): the
    same from one mini-batch to the next. The table is read-only, being shared."""
    shapes: dict[Shape, int] = {}
    per_type = [[shapes.setdefault(s, len(shapes)) for s in t.program.output_shapes] if there else []
                for t, there in zip(types, present)]
    width = max(max(len(p) for p in per_type), 1)
    table = np.full((len(types), width), -1, dtype=np.int32)
    for ti, ids in enumerate(per_type):
        table[ti, :len(ids)] = ids
    table.flags.writeable = False
    return tuple(shapes), table


def value_shapes(graph: Graph) -> tuple[list[Shape], np.ndarray]:
    """Distinct output shapes, and for each value the index of its shape."""
    shapes, table = output_arenas(graph)
    owner, slot = value_owner(graph)
    return shapes, table[graph.node_type[owner], slot]


def value_owner(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """For each value id: the node that produces it and its output slot."""
    def compute(g: Graph):
        counts = np.diff(g.value_ptr)
        owner = np.repeat(np.arange(g.num_nodes), counts)
        return owner, np.arange(g.num_values) - g.value_ptr[owner]
    return graph.cached("value_owner", compute)


def verify_layout(graph: Graph, schedule: Schedule, layout: Layout) -> None:
    """Rows in bounds, never shared and none left empty; each batch's outputs consecutive, in batch order."""
    def fail(message: str):
        raise VerificationError(f"layout verifier ({layout.mode}): {message}")

    if len(layout.value_arena) != graph.num_values or len(layout.value_row) != graph.num_values:
        fail(f"{len(layout.value_row)} placed values, the graph has {graph.num_values}")
    if len(layout.arena_rows) != len(layout.arena_shapes) or np.any(layout.arena_rows < 1):
        fail(f"{len(layout.arena_shapes)} arenas, {len(layout.arena_rows)} row counts: every arena needs its "
             "rows, at least one")
    shapes, shape_of = value_shapes(graph)
    arena = layout.value_arena.astype(np.int64)
    if np.any((arena < 0) | (arena >= len(layout.arena_shapes))):
        fail("a value is placed in an arena that does not exist")
    arena_shape_id = np.array([shapes.index(s) if s in shapes else -1 for s in layout.arena_shapes])
    bad = np.flatnonzero(arena_shape_id[arena] != shape_of)
    if len(bad):
        fail(f"value {bad[0]} of shape {list(shapes[shape_of[bad[0]]])} is placed in an arena of shape "
             f"{list(layout.arena_shapes[arena[bad[0]]])}")
    row = layout.value_row
    if np.any((row < 0) | (row >= layout.arena_rows[arena])):
        fail("a value is placed outside its arena")
    # Counted first: then no arena has more rows than values, and the row keys below cannot overflow.
    if np.any(np.bincount(arena, minlength=len(layout.arena_shapes)) != layout.arena_rows):
        fail("an arena has rows that hold no value")
    key = arena * (int(layout.arena_rows.max(initial=0)) + 1) + row
    if len(np.unique(key)) != len(key):
        fail("two values share a row")  # rows are never reused, so no two tensors overlap
    owner, slot = value_owner(graph)
    batch_of = schedule.batch_of_node(graph.num_nodes)
    position = np.empty(graph.num_nodes, dtype=np.int64)
    position[schedule.nodes] = np.arange(len(schedule.nodes)) - np.repeat(schedule.ptr[:-1], schedule.sizes)
    order = np.lexsort((position[owner], slot, batch_of[owner]))
    same_group = (batch_of[owner[order]][1:] == batch_of[owner[order]][:-1]) & \
                 (slot[order][1:] == slot[order][:-1])
    broken = same_group & ((row[order][1:] != row[order][:-1] + 1) | (arena[order][1:] != arena[order][:-1]))
    if np.any(broken):
        v = int(order[np.flatnonzero(broken)[0] + 1])
        fail(f"the outputs of batch {batch_of[owner[v]]} (slot {slot[v]}) are not consecutive rows "
             "in batch order")


def format_layout(layout: Layout) -> str:
    lines = [f"layout ({layout.mode}): {len(layout.arena_shapes)} arenas, {len(layout.value_row)} values"]
    for a, (shape, rows) in enumerate(zip(layout.arena_shapes, layout.arena_rows.tolist())):
        lines.append(f"  arena {a}: f32[{','.join(map(str, shape))}] x {rows} rows")
    return "\n".join(lines)

