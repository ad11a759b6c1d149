"""The cell compiler's IR: a cell program's internal schedule, its plan, and the compiled cell.

A cell's ops are rewritten (`rewrite`), batched once (`schedule`) and laid out
(`layout`); a kernel then replays those internal batches for `k` calls. Inside
a kernel every tensor is a `[k, width]` row per call: an internal batch of `m`
ops writes each output slot as one such tensor, its r-th op's value in the r-th
run of columns, and ops that only cut a tensor (`chunk`, `split` of a vector,
`reshape`) are column ranges of their input. So every value is a column range
of a *base* (a cell input or a batch output).

Operand kinds, as the kernel serves them:
  VALUE      one op: the value itself
  VIEW       the m values side by side in one base, in order (a view)
  BROADCAST  the same value for every op (an expanded view)
  GATHER     anything else: it would be a copy at run time, so the layout pass runs
             such a batch op by op instead; compiled cells have none
  SHARED     one parameter for every op
  STACKED    different parameters, stacked once when the kernel is built
  TOKENS     token inputs (stacked ids; no float copy)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.program import Program, Shape, format_program

VALUE, VIEW, BROADCAST, GATHER, SHARED, STACKED, TOKENS = range(7)
KIND_NAMES = ("value", "view", "broadcast", "gather", "shared", "stacked", "tokens")


@dataclass(frozen=True)
class Derived:
    """A parameter computed once from others when weights are bound: `table @ weight (+ bias)`."""

    table: str
    weight: str
    bias: str | None
    shape: Shape


@dataclass(frozen=True)
class CellSchedule:
    batches: tuple[tuple[int, ...], ...]  # op indices per batch, each batch in program order
    lower_bound: int
    exact: bool  # False when the search stopped at its budget with the best schedule so far


@dataclass(frozen=True)
class Home:
    """Where a value lives inside the kernel: columns `start:start+size` of base `base`.

    Bases are numbered: the cell inputs first, then the output slots of the
    internal batches in run order (`CellPlan.base_of`)."""

    base: int
    start: int
    size: int


@dataclass(frozen=True)
class StepOperand:
    kind: int
    values: tuple  # value ids, or parameter names for SHARED/STACKED
    base: int = -1  # VIEW: the base holding the values
    start: int = 0  # VIEW: their first column


@dataclass(frozen=True)
class Step:
    """One internal batch: ops (program op indices) in memory order, one operand per argument."""

    ops: tuple[int, ...]
    operands: tuple[StepOperand, ...]


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


@dataclass(frozen=True)
class CompiledCell:
    """What a kernel runs for calls of `source`: the rewritten program, the parameters it
    derives from the model's (name -> `Derived`), and the plan of its internal batches."""

    source: Program
    derived: dict
    plan: CellPlan

    @property
    def program(self) -> Program:
        return self.plan.program

    def to_json(self) -> dict:
        """The plan file's record; homes and operands are derived again from the steps on load."""
        s = self.plan.schedule
        return {
            "source": self.source.to_json(), "program": self.program.to_json(), "memory": self.plan.memory,
            "derived": {n: [d.table, d.weight, d.bias, list(d.shape)] for n, d in sorted(self.derived.items())},
            "schedule": {"batches": [list(b) for b in s.batches], "lower_bound": s.lower_bound, "exact": s.exact},
            "steps": [list(step.ops) for step in self.plan.steps],
        }


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


def format_cell_schedule(program: Program, schedule: CellSchedule) -> str:
    """The printer of an internal schedule: each batch's ops by the values they make."""
    lines = [f"  {len(schedule.batches)} internal batches (lower bound {schedule.lower_bound}"
             f"{'' if schedule.exact else ', search stopped early'})"]
    for b in schedule.batches:
        outs = ", ".join(program.values[program.ops[j].outs[0]].name for j in b)
        lines.append(f"    {program.ops[b[0]].kind} x{len(b)} -> {outs}")
    return "\n".join(lines)


def format_compiled_cell(cell: CompiledCell) -> str:
    """The printer of a compiled cell: the program the kernel runs, what it derives, its plan."""
    derived = [f"  derived {name} = {d.table} @ {d.weight}" + (f" + {d.bias}" if d.bias else "")
               for name, d in sorted(cell.derived.items())]
    return "\n".join([format_program(cell.program), *derived, format_cell_plan(cell.plan)])
