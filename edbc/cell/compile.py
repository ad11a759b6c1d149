"""The cell compiler's entry: a cell program in, the `CompiledCell` its kernels run out."""

from __future__ import annotations

from typing import Callable

from ..errors import ArtifactError
from ..spec.program import Program, Shape
from .ir import CellSchedule, CompiledCell, Derived
from .layout import plan_of_steps


def compile_cell(program: Program, param_shapes: dict[str, Shape], memory: str = "pq", batch_ops: bool = True,
                 verify: bool = False, dump_after: str | None = None,
                 dump: Callable[[str], None] | None = None) -> CompiledCell:
    """Run the cell passes (`edbc.passes.CELL_PASSES`) on `program`: rewrites, the internal
    schedule (with `batch_ops=False`, one op a batch: the op-by-op baseline) and its layout
    for `memory` ("pq" or "none")."""
    from ..passes import CELL_PASSES, CellState, run_passes  # the pass list is kept with the graph level's

    state = CellState(program, dict(param_shapes), memory, batch_ops, program)
    state = run_passes(CELL_PASSES, state, verify, dump_after, dump)
    return CompiledCell(program, state.derived, state.plan)


def compiled_cell_from_json(data: dict, path: str) -> CompiledCell:
    """A plan file's record of a compiled cell (`CompiledCell.to_json`); the caller verifies it."""
    try:
        program = Program.from_json(data["program"])
        s = data["schedule"]
        schedule = CellSchedule(tuple(tuple(int(j) for j in b) for b in s["batches"]), int(s["lower_bound"]),
                                bool(s["exact"]))
        derived = {str(name): Derived(str(t), str(w), None if b is None else str(b), tuple(int(x) for x in shape))
                   for name, (t, w, b, shape) in data["derived"].items()}
        steps = [[int(j) for j in step] for step in data["steps"]]
        if any(not step or not all(0 <= j < len(program.ops) for j in step) for step in steps):
            raise ValueError("a step names an op the program lacks")
        plan = plan_of_steps(program, str(data["memory"]), schedule, steps)
        return CompiledCell(Program.from_json(data["source"]), derived, plan)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(f"corrupt compiled cell in the plan ({e})", path=path) from None
