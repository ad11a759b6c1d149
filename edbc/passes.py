"""The compiler's passes, both levels, in order, each with its verifier and its printer.

Across instances (one mini-batch at a time, `BATCH_PASSES`):

    build_graph       instances -> cell-level graph          (edbc.graph.build)
    lower_to_ops      cell-level -> op-level graph           (edbc.graph.lower; --granularity op only)
    schedule          graph -> batches                       (edbc.schedule, edbc.policy; --policy)
    plan_memory       graph + batches -> batches, layout     (edbc.memory; --memory pq or none; pq on
                                                             a mini-batch run N times lays it out
                                                             unplanned first)
    prepare_operands  layout -> operand table                (edbc.memory.operands; a mini-batch about
                                                             to run: views, broadcasts, gather rows)
    plan_where_it_pays  pq on a mini-batch run N times: the pq layout where the table's gathers cost
                      more than planning (edbc.memory.planner.planning_pays)

Inside each cell (once per cell program, `CELL_PASSES`):

    strip_dropout     dropout(x) -> x, for inference                       (edbc.cell.rewrite)
    fold_embeddings   embed(E, t) @ W -> a row of the derived table E·W, for inference
    fuse_lerp         add(x, mul(w, sub(y, x))) -> lerp(x, y, w)
    fuse_addcmul      sums of single-use products -> addcmul steps
    schedule_cell     the cell's ops in the fewest internal batches       (edbc.cell.schedule)
    plan_cell_memory  op order in each internal batch, homes, operands    (edbc.cell.layout)

`run_passes` runs a list over a state value; with `verify` it runs each pass's
verifier after it, and a failure says which pass broke after which ran.
`dump_after` prints the IR after the named pass (`edbc compile --dump-after`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .cell.ir import CellPlan, CellSchedule, format_cell_plan, format_cell_schedule
from .cell.layout import plan_layout
from .cell.rewrite import fold_embeddings, fuse_addcmul, fuse_lerp, strip_dropout
from .cell.schedule import schedule_program
from .cell.verify import verify_cell_plan, verify_cell_schedule, verify_program
from .errors import UsageError, VerificationError
from .graph import CELL, OP, Graph, build_graph, format_graph, lower_to_ops, verify_graph
from .memory import PLANNERS, Layout, format_layout, verify_layout
from .memory.operands import OperandTable, format_operands, operand_table, verify_operands
from .memory.planner import planning_pays, unplanned
from .policy.resolve import check_policy_name
from .schedule import Schedule, format_schedule, verify_schedule
from .settings import DEFAULT_MEMORY, GRANULARITIES
from .spec.model import ModelSpec
from .spec.program import Program, format_program


@dataclass(frozen=True)
class CompileOptions:
    """How mini-batches are compiled: the `--policy` (a name, a policy file, or None for the
    default), `--granularity` and `--memory`. Checked when made."""

    policy: str | None = None
    granularity: str = CELL
    memory: str = DEFAULT_MEMORY

    def __post_init__(self):
        check_policy_name(self.policy)
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"unknown granularity '{self.granularity}'; expected one of: "
                             f"{', '.join(GRANULARITIES)}")
        if self.memory not in PLANNERS:
            raise UsageError(f"unknown memory mode '{self.memory}'; expected one of: {', '.join(PLANNERS)}")


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable  # state -> state
    verify: Callable  # state -> None, raises VerificationError
    show: Callable  # state -> the printed IR after the pass
    phase: str = ""  # the report phase its time counts to


def run_passes(passes: tuple[Pass, ...], state, verify: bool = False, dump_after: str | None = None,
               dump: Callable[[str], None] | None = None, timings: dict[str, float] | None = None):
    """Run `passes` in order over `state`. `timings` receives seconds per phase (verifiers and
    dumps are not counted)."""
    done: list[str] = []
    for p in passes:
        t0 = time.perf_counter()
        state = p.run(state)
        if timings is not None:
            timings[p.phase] = timings.get(p.phase, 0.0) + time.perf_counter() - t0
        done.append(p.name)
        if verify:
            try:
                p.verify(state)
            except VerificationError as e:
                raise VerificationError(f"the IR after pass {p.name} is invalid (passes run: {', '.join(done)}): "
                                        f"{e}") from None
        if dump is not None and dump_after == p.name:
            dump(p.show(state))
    return state


# -- inside cells ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellState:
    program: Program  # the program as rewritten so far
    param_shapes: dict  # the model's parameters, and derived ones once folded
    memory: str
    batch_ops: bool = True  # False: one op an internal batch (the op-by-op baseline)
    inference: bool = True  # False (training): strip_dropout and fold_embeddings leave the program as it is
    derived: dict = field(default_factory=dict)
    schedule: CellSchedule | None = None
    plan: CellPlan | None = None


def _strip_dropout(s: CellState) -> CellState:
    return replace(s, program=strip_dropout(s.program)) if s.inference else s


def _fold_embeddings(s: CellState) -> CellState:
    if not s.inference:
        return s
    program, derived = fold_embeddings(s.program, s.param_shapes)
    shapes = dict(s.param_shapes, **{name: d.shape for name, d in derived.items()})
    return replace(s, program=program, derived=dict(s.derived, **derived), param_shapes=shapes)


def _rewrite(fn: Callable[[Program], Program]):
    return lambda s: replace(s, program=fn(s.program))


def _verify_rewrite(s: CellState) -> None:
    verify_program(s.program, s.param_shapes)


def _show_program(s: CellState) -> str:
    return format_program(s.program)


CELL_PASSES = (
    Pass("strip_dropout", _strip_dropout, _verify_rewrite, _show_program),
    Pass("fold_embeddings", _fold_embeddings, _verify_rewrite, _show_program),
    Pass("fuse_lerp", _rewrite(fuse_lerp), _verify_rewrite, _show_program),
    Pass("fuse_addcmul", _rewrite(fuse_addcmul), _verify_rewrite, _show_program),
    Pass("schedule_cell", lambda s: replace(s, schedule=schedule_program(s.program, s.param_shapes, s.batch_ops)),
         lambda s: verify_cell_schedule(s.program, s.schedule),
         lambda s: format_program(s.program) + "\n" + format_cell_schedule(s.program, s.schedule)),
    Pass("plan_cell_memory", lambda s: replace(s, plan=plan_layout(s.program, s.schedule, s.memory)),
         lambda s: verify_cell_plan(s.plan),
         lambda s: format_program(s.program) + "\n" + format_cell_plan(s.plan)),
)


# -- across instances -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchState:
    spec: ModelSpec
    instances: list
    options: CompileOptions
    policy: object  # a resolved `edbc.policy.resolve.BatchingPolicy`
    cell_graph: Graph | None = None
    graph: Graph | None = None  # what the schedule runs on: cell_graph, or its op-level lowering
    schedule: Schedule | None = None
    layout: Layout | None = None
    fsm_fallbacks: int = 0
    runs: int | None = None  # how often the mini-batch will run, where known (None: a plan, run any number)
    operands: OperandTable | None = None  # the layout's operand table, where the memory pass made it


def _schedule(s: BatchState) -> BatchState:
    sched, fallbacks = s.policy.schedule(s.graph)
    return replace(s, schedule=sched, fsm_fallbacks=fallbacks)


def _decides_later(s: BatchState) -> bool:
    """pq on a mini-batch run a known number of times plans only where that repays its cost, which
    the unplanned layout's operand table tells (`planning_pays`)."""
    return s.options.memory == "pq" and s.runs is not None


def _plan_memory(s: BatchState) -> BatchState:
    sched, layout = (unplanned if _decides_later(s) else PLANNERS[s.options.memory])(s.graph, s.schedule)
    return replace(s, schedule=sched, layout=layout)


def _prepare_operands(s: BatchState) -> BatchState:
    """The operand table of a mini-batch about to run; a plan compiled ahead of time has its tables
    made when it runs."""
    return s if s.runs is None else replace(s, operands=operand_table(s.graph, s.schedule, s.layout))


def _plan_where_it_pays(s: BatchState) -> BatchState:
    if not (_decides_later(s) and planning_pays(s.operands, s.graph, s.schedule, s.runs)):
        return s
    sched, layout = PLANNERS["pq"](s.graph, s.schedule)
    return replace(s, schedule=sched, layout=layout, operands=None)  # the run makes the new table


def _verify_operands(s: BatchState) -> None:
    if s.operands is not None:
        verify_operands(s.operands, s.schedule)


def _show_operands(s: BatchState) -> str:
    return "(operand tables are made when the plan runs)" if s.operands is None else format_operands(s.operands)


BATCH_PASSES = (
    Pass("build_graph", lambda s: replace(s, cell_graph=build_graph(s.spec, s.instances)),
         lambda s: verify_graph(s.cell_graph), lambda s: format_graph(s.cell_graph, max_nodes=None), "graph"),
    Pass("lower_to_ops",
         lambda s: replace(s, graph=lower_to_ops(s.cell_graph) if s.options.granularity == OP else s.cell_graph),
         lambda s: verify_graph(s.graph), lambda s: format_graph(s.graph, max_nodes=None), "graph"),
    Pass("schedule", _schedule, lambda s: verify_schedule(s.graph, s.schedule),
         lambda s: format_schedule(s.graph, s.schedule, max_batches=None), "schedule"),
    Pass("plan_memory", _plan_memory, lambda s: verify_layout(s.graph, s.schedule, s.layout),
         lambda s: format_layout(s.layout), "memory"),
    Pass("prepare_operands", _prepare_operands, _verify_operands, _show_operands, "prepare"),
    Pass("plan_where_it_pays", _plan_where_it_pays, lambda s: verify_layout(s.graph, s.schedule, s.layout),
         lambda s: format_layout(s.layout), "memory"),
)

PASS_NAMES = tuple(p.name for p in BATCH_PASSES + CELL_PASSES)
