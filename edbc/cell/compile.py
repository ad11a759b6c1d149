"""The cell compiler's entry: a cell program in, the `CompiledCell` its kernels run out."""

from __future__ import annotations

from typing import Callable

from ..errors import ArtifactError, VerificationError
from ..spec.program import Program, Shape
from .ir import CellSchedule, CompiledCell, Derived
from .layout import plan_of_steps
from .verify import verify_cell_plan, verify_cell_schedule, verify_program, verify_steps


def compile_cell(program: Program, param_shapes: dict[str, Shape], memory: str = "pq", batch_ops: bool = True,
                 verify: bool = False, dump_after: str | None = None,
                 dump: Callable[[str], None] | None = None, inference: bool = True) -> CompiledCell:
    """Run the cell passes (`edbc.passes.CELL_PASSES`) on `program`: rewrites, the internal
    schedule (with `batch_ops=False`, one op a batch: the op-by-op baseline) and its layout
    for `memory` ("pq" or "none"). `inference=False` (training) keeps dropout, and embeddings unfolded:
    a folded table E·W costs a pass over the whole vocabulary each time the weights change."""
    from ..passes import CELL_PASSES, CellState, run_passes  # the pass list is kept with the graph level's

    state = CellState(program, dict(param_shapes), memory, batch_ops, inference)
    state = run_passes(CELL_PASSES, state, verify, dump_after, dump)
    return CompiledCell(program, state.derived, state.plan)


def compiled_cell_from_json(data, param_shapes: dict[str, Shape], path: str) -> CompiledCell:
    """A plan file's record of a compiled cell (`CompiledCell.to_json`), decoded strictly and
    verified (program, schedule, steps) before anything is derived from it; `param_shapes` are the
    model's parameters."""
    def need(ok: bool, what: str):
        if not ok:
            raise ArtifactError(f"corrupt compiled cell in the plan: malformed {what}", path=path)

    def index_lists(value, what: str, n: int) -> list[list[int]]:
        need(type(value) is list and all(type(b) is list and b and all(type(j) is int and 0 <= j < n for j in b)
                                         for b in value), what)
        return value

    need(type(data) is dict, "record")
    try:
        program = Program.from_json(data.get("program"))
        source = Program.from_json(data.get("source"))
    except ValueError as e:
        raise ArtifactError(f"corrupt compiled cell in the plan: {e}", path=path) from None
    s = data.get("schedule")
    need(type(s) is dict and type(s.get("lower_bound")) is int and type(s.get("exact")) is bool, "schedule")
    batches = index_lists(s.get("batches"), "schedule", len(program.ops))
    schedule = CellSchedule(tuple(tuple(b) for b in batches), s["lower_bound"], s["exact"])
    derived = data.get("derived")
    need(type(derived) is dict, "derived parameters")
    for d in derived.values():
        need(type(d) is list and len(d) == 4 and type(d[0]) is str and type(d[1]) is str
             and (d[2] is None or type(d[2]) is str) and type(d[3]) is list
             and all(type(x) is int and x > 0 for x in d[3]), "derived parameters")
    need(data.get("memory") in ("pq", "none"), "memory mode")
    steps = index_lists(data.get("steps"), "steps", len(program.ops))
    derived = {name: Derived(t, w, b, tuple(shape)) for name, (t, w, b, shape) in derived.items()}
    for d in derived.values():  # a recipe the runtime can follow: table [rows, k] @ weight [k, out] + bias [out]
        table, weight = param_shapes.get(d.table), param_shapes.get(d.weight)
        need(table is not None and weight is not None and len(table) == 2 and len(weight) == 2
             and table[1] == weight[0] and d.shape == (table[0], weight[1])
             and (d.bias is None or tuple(param_shapes.get(d.bias, ())) == (weight[1],)), "derived parameters")
    try:
        verify_program(program, dict(param_shapes, **{name: d.shape for name, d in derived.items()}))
        verify_cell_schedule(program, schedule)
        verify_steps(program, steps)
        plan = plan_of_steps(program, data["memory"], schedule, steps)
        verify_cell_plan(plan)
    except VerificationError as e:
        raise ArtifactError(f"corrupt compiled cell in the plan: {str(e).splitlines()[0]}", path=path) from None
    return CompiledCell(source, derived, plan)
