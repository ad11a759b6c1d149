"""Verifiers of the cell compiler's IRs: programs, internal schedules and cell plans.

`verify_program` re-applies every op's own shape rule (`edbc.spec.ops`), so a
rewrite that breaks a shape, reads a value before it exists or loses an
output is caught at the pass that did it. The others check that every
computing op runs exactly once, after the ops it reads, and that plans serve
no operand by a copy. Errors name the cell and op and show the program
around it.
"""

from __future__ import annotations

from ..errors import VerificationError
from ..spec.ops import OPS, Operand, ShapeError, computing_producers, is_alias
from ..spec.program import Program, Shape, format_program
from .ir import GATHER, CellPlan, CellSchedule

_CONTEXT = 10  # program lines shown on each side of the offending op


def _fail(program: Program, op_index: int | None, message: str):
    lines = format_program(program).splitlines()
    where = ""
    if op_index is not None:
        where = f" op {op_index} ({program.ops[op_index].kind})"
        at = op_index + 1  # line 0 is the signature
        lo, hi = max(at - _CONTEXT, 1), min(at + _CONTEXT + 1, len(lines))
        lines = lines[:1] + [("> " if i == at else "  ") + lines[i] for i in range(lo, hi)]
    raise VerificationError(f"cell {program.name}{where}: {message}\n" + "\n".join(lines))


def verify_program(program: Program, param_shapes: dict[str, Shape]) -> None:
    """Values are defined once, before use; parameters exist; every op's shapes follow its rule."""
    n = len(program.values)
    defined = [i < program.n_inputs for i in range(n)]
    for j, op in enumerate(program.ops):
        if op.kind not in OPS:
            _fail(program, j, f"unknown op kind '{op.kind}'")
        operands = []
        for a in op.args:
            if isinstance(a, str):
                if a not in param_shapes:
                    _fail(program, j, f"reads parameter '{a}', which does not exist")
                operands.append(Operand(True, tuple(param_shapes[a])))
            elif not (isinstance(a, int) and 0 <= a < n and defined[a]):
                _fail(program, j, f"reads value {a} before it is computed")
            else:
                operands.append(Operand(False, program.values[a].shape, program.values[a].dtype))
        try:
            shapes = OPS[op.kind].infer(operands, dict(op.attrs))
        except ShapeError as e:
            _fail(program, j, str(e))
        except (IndexError, KeyError, TypeError, ValueError):  # operands no parser would have let through
            _fail(program, j, "its operands or attributes do not fit the op at all")
        if len(shapes) != len(op.outs):
            _fail(program, j, f"makes {len(op.outs)} values; its rule gives {len(shapes)}")
        for v, shape in zip(op.outs, shapes):
            if not 0 <= v < n or defined[v]:
                _fail(program, j, f"defines value {v} twice or out of range")
            if tuple(program.values[v].shape) != tuple(shape):
                _fail(program, j, f"value {program.values[v].name} is declared {list(program.values[v].shape)}, "
                                  f"its rule gives {list(shape)}")
            defined[v] = True
    for v in program.outputs:
        if not (0 <= v < n and defined[v]):
            _fail(program, None, f"output {v} is never computed")


def _check_batches(program: Program, batches, what: str) -> None:
    """Every computing op exactly once, batches of one kind, each op after the ops it reads."""
    producer = computing_producers(program)
    done_at: dict[int, int] = {}
    for b, ops in enumerate(batches):
        if not ops:
            _fail(program, None, f"{what} {b} is empty")
        for j in ops:
            if not 0 <= j < len(program.ops) or is_alias(program, program.ops[j]):
                _fail(program, None, f"{what} {b} runs op {j}, which is not a computing op")
            if j in done_at:
                _fail(program, j, f"runs twice (in {what}s {done_at[j]} and {b})")
            if program.ops[j].kind != program.ops[ops[0]].kind:
                _fail(program, j, f"{what} {b} mixes op kinds")
        for j in ops:
            for a in program.ops[j].args:
                if not isinstance(a, str) and a in producer and done_at.get(producer[a], b) >= b:
                    _fail(program, j, f"runs in {what} {b}, before the op making value {a}")
        for j in ops:
            done_at[j] = b
    missing = [j for j, op in enumerate(program.ops) if not is_alias(program, op) and j not in done_at]
    if missing:
        _fail(program, missing[0], f"never runs in any {what}")


def verify_steps(program: Program, steps) -> None:
    """Op index lists (a plan's steps, before homes are derived from them) run the program."""
    _check_batches(program, steps, "step")


def verify_cell_schedule(program: Program, schedule: CellSchedule) -> None:
    _check_batches(program, schedule.batches, "internal batch")
    if len(schedule.batches) < schedule.lower_bound:
        _fail(program, None, f"{len(schedule.batches)} internal batches, below the lower bound "
                             f"{schedule.lower_bound}")


def verify_cell_plan(plan: CellPlan) -> None:
    """The steps run the program (as `verify_cell_schedule`), one operand per argument, no copies."""
    program = plan.program
    verify_steps(program, [s.ops for s in plan.steps])
    for b, step in enumerate(plan.steps):
        if len(step.operands) != len(program.ops[step.ops[0]].args):
            _fail(program, step.ops[0], f"step {b} has {len(step.operands)} operands for "
                                        f"{len(program.ops[step.ops[0]].args)} arguments")
        if len(step.ops) > 1 and any(o.kind == GATHER for o in step.operands):
            _fail(program, step.ops[0], f"step {b} gathers an operand; such batches must run op by op")
