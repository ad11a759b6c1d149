"""Checks of a loaded plan, before anything runs it.

Checksums prove that a plan is intact, not that edbc wrote it: a plan forged with recomputed
checksums must be refused with one line (`ArtifactError`, exit 5) instead of reaching the runtime
(an IndexError, a kernel fed the wrong tensor). `load_plan` calls, in order:

    check_plan_header   the decoded header and parts: JSON types, ranges, column names and dtypes
    parse_embedded_spec the spec text, validated like any spec
    op_program          an op-level node type must be one op of one of the spec's cells
    check_plan          the built plan: the IR verifiers, results, instances, token ids, and the
                        op-level graph against the lowering of the cell-level one
"""

from __future__ import annotations

import functools

import numpy as np

from ..artifact import _canonical, expect, expect_int, expect_ints, show
from ..errors import ArtifactError, InputError, UsageError, VerificationError
from ..graph.ir import CELL, OP, Graph
from ..graph.lower import lower_to_ops, single_op_program
from ..memory.planner import PLANNERS
from ..spec.load import parse_model
from ..spec.model import ModelSpec
from ..spec.program import Program

# The columns of each IR as `save_plan` writes them (the IR classes' own dtypes), one part each.
_GRAPH_COLUMNS = {"node_type": "<i4", "arg_ptr": "<i8", "arg_node": "<i4", "arg_slot": "<i4", "imm_ptr": "<i8",
                  "imm": "<i8", "instance": "<i4", "out_node": "<i4", "out_slot": "<i4"}
_SCHEDULE_COLUMNS = {"ptr": "<i8", "nodes": "<i4", "batch_type": "<i4"}
_LAYOUT_COLUMNS = {"arena_rows": "<i8", "value_arena": "<i4", "value_row": "<i8"}
_FILES = "files/"


def _failer(path: str):
    def fail(message: str):
        raise ArtifactError(f"corrupt plan: {message}", path=path)
    return fail


def check_plan_header(head: dict, arrays: dict[str, np.ndarray], path: str) -> None:
    """Every header field `load_plan` reads, of its JSON type and in range, and every part it
    builds an IR from, present, one-dimensional and of its dtype. Refused, never coerced."""
    fail = _failer(path)
    expect(head.get("spec_text"), str, "spec_text", fail)
    inputs = expect(head.get("inputs"), dict, "inputs", fail)
    for key in ("spec", "data"):
        expect(inputs.get(key), str, f"inputs.{key}", fail)
    for key in ("policy", "weights"):
        if inputs.get(key) is not None:
            expect(inputs[key], str, f"inputs.{key}", fail)
    for name, value in expect(head.get("dims", {}), dict, "dims", fail).items():
        expect_int(value, f"dims.{name}", fail, low=1)
    for key in ("data", "policy"):
        expect(head.get(key), str, key, fail)
    granularity = _one_of(head.get("granularity"), (CELL, OP), "granularity", fail)
    _one_of(head.get("memory"), tuple(PLANNERS), "memory", fail)
    expect_int(head.get("batch_size"), "batch_size", fail, low=1)
    expect_int(head.get("seed"), "seed", fail, low=None)
    for name, a in arrays.items():
        if name.startswith(_FILES) and (a.dtype != np.uint8 or a.ndim != 1):
            fail(f"part '{name}' is {a.dtype.str}{list(a.shape)}; expected the bytes of a file")
    for i, entry in enumerate(expect(head.get("minibatches"), list, "minibatches", fail)):
        _check_minibatch(i, entry, granularity, arrays, fail)


def _check_minibatch(i: int, entry, granularity: str, arrays: dict[str, np.ndarray], fail) -> None:
    where = f"mini-batch {i}"
    expect(entry, dict, where, fail)
    _check_graph_header(entry.get("cell_graph"), CELL, f"{where}'s cell_graph", fail)
    _check_columns(arrays, f"{i}/cell/", _GRAPH_COLUMNS, fail)
    if granularity == OP:
        _check_graph_header(entry.get("graph"), OP, f"{where}'s graph", fail)
        _check_columns(arrays, f"{i}/exec/", _GRAPH_COLUMNS, fail)
    elif "graph" in entry:
        fail(f"{where} has an op-level graph in a plan at cell level; expected none")
    for dims in expect(entry.get("arenas"), list, f"{where}'s arenas", fail):
        expect_ints(dims, f"an arena shape of {where}", fail, low=1)
    _one_of(entry.get("layout_mode"), tuple(PLANNERS), f"{where}'s layout_mode", fail)
    expect(entry.get("policy"), str, f"{where}'s policy", fail)
    expect_int(entry.get("fsm_fallbacks", 0), f"{where}'s fsm_fallbacks", fail)
    _check_columns(arrays, f"{i}/schedule/", _SCHEDULE_COLUMNS, fail)
    _check_columns(arrays, f"{i}/layout/", _LAYOUT_COLUMNS, fail)


def _check_graph_header(head, granularity: str, what: str, fail) -> None:
    expect(head, dict, what, fail)
    _one_of(head.get("granularity"), (granularity,), f"{what}'s granularity", fail)
    expect_int(head.get("num_instances"), f"{what}'s num_instances", fail, low=1)
    key, kind = ("cell", str) if granularity == CELL else ("program", dict)
    for t in expect(head.get("types"), list, f"{what}'s types", fail):
        expect(t, dict, f"a type of {what}", fail)
        expect(t.get(key), kind, f"a type's {key} in {what}", fail)
        expect(t.get("batchable"), bool, f"a type's batchable in {what}", fail)


def _check_columns(arrays: dict[str, np.ndarray], prefix: str, columns: dict[str, str], fail) -> None:
    present = {k[len(prefix):] for k in arrays if k.startswith(prefix)}
    odd = sorted(present ^ set(columns))
    if odd:
        fail(f"part '{prefix}{odd[0]}' is {'unexpected' if odd[0] in present else 'missing'}; expected the "
             f"parts {', '.join(prefix + c for c in columns)}")
    for name, dtype in columns.items():
        a = arrays[prefix + name]
        if a.dtype.str != dtype or a.ndim != 1:
            fail(f"part '{prefix}{name}' is {a.dtype.str}{list(a.shape)}; expected a column of {dtype}")


def _one_of(value, allowed: tuple[str, ...], what: str, fail) -> str:
    if type(value) is not str or value not in allowed:
        fail(f"{what} is {show(value)}; expected {' or '.join(allowed)}")
    return value


def parse_embedded_spec(text: str, path: str, files: dict[str, bytes], dims: dict[str, int] | None = None) -> ModelSpec:
    """The plan's spec (with the dimensions it was compiled with), validated like any spec; a fault is
    the plan's (exit 5), at its line and column."""
    try:
        return parse_model(text, path=f"{path} (embedded spec)", files=files, dims=dims)
    except (InputError, UsageError) as e:
        raise ArtifactError(e.message, path=e.path, line=e.line, column=e.column) from None


def op_program(spec: ModelSpec, program: dict, path: str) -> Program:
    """The op-level node type a plan names by its program, which must be one op of one of the spec's
    cells as `lower_to_ops` makes it (never a program the file makes up)."""
    found = _op_programs(spec).get(_canonical(program))
    if found is not None:
        return found
    raise ArtifactError(f"corrupt plan: op type {show(program.get('name'))} is no op of the spec's cells; "
                        "expected the plan's own spec", path=path)


@functools.lru_cache(maxsize=4)
def _op_programs(spec: ModelSpec) -> dict[bytes, Program]:
    """Canonical JSON -> program of every op of every cell, as `lower_to_ops` makes them."""
    programs = (single_op_program(cell, op) for cell in spec.cells.values() for op in cell.ops)
    return {_canonical(p.to_json()): p for p in programs}


def check_plan(plan, path: str) -> None:
    """The IR verifiers on every mini-batch, then what they cannot know: results and instances,
    token ids against the embedding tables, and the op-level graph against the cell-level one."""
    from .plan import verify_plan  # plan.py imports this module

    fail = _failer(path)
    try:
        verify_plan(plan)
    except VerificationError as e:
        fail(str(e).splitlines()[0])
    for i, b in enumerate(plan.batches):
        _check_instances(b.cell_graph, plan.batch_size, f"mini-batch {i}", fail)
        _check_tokens(b.cell_graph, plan.spec, f"mini-batch {i}", fail)
        if b.graph is not b.cell_graph and not _same_graph(b.graph, lower_to_ops(b.cell_graph)):
            fail(f"mini-batch {i}: the op-level graph is not the lowering of the cell-level graph; "
                 "expected the graph edbc compiled")


def _check_instances(graph: Graph, batch_size: int, where: str, fail) -> None:
    if graph.num_instances > batch_size:
        fail(f"{where} has {graph.num_instances} instances; expected at most the batch size {batch_size}")
    empty = graph.num_instances - len(np.unique(graph.instance))
    if empty:
        fail(f"{where}: {empty} of its {graph.num_instances} instances have no nodes; expected nodes for each")
    if len(graph.out_node) == 0:
        fail(f"{where} has no results; expected the readout of each instance")


def _check_tokens(graph: Graph, spec: ModelSpec, where: str, fail) -> None:
    """Every token id must be a row of each embedding table its input feeds."""
    if not len(graph.imm):
        return
    width = max(len(t.program.token_inputs) for t in graph.types)
    rows = np.full((len(graph.types), max(width, 1)), np.iinfo(np.int64).max, dtype=np.int64)
    for ti, t in enumerate(graph.types):
        position = {v: q for q, v in enumerate(t.program.token_inputs)}
        for op in t.program.ops:
            if op.kind == "embed" and op.args[1] in position:
                q = position[op.args[1]]
                rows[ti, q] = min(rows[ti, q], spec.params[op.args[0]].shape[0])
    owner = np.repeat(np.arange(graph.num_nodes), np.diff(graph.imm_ptr))
    limit = rows[graph.node_type[owner], np.arange(len(graph.imm)) - graph.imm_ptr[owner]]
    bad = np.flatnonzero((graph.imm < 0) | (graph.imm >= limit))
    if len(bad):
        e = int(bad[0])
        fail(f"{where}: node %{owner[e]} has token id {graph.imm[e]}; expected a row of its embedding table "
             f"(0 to {limit[e] - 1})")


def _same_graph(a: Graph, b: Graph) -> bool:
    if [(t.name, t.batchable, t.program) for t in a.types] != [(t.name, t.batchable, t.program) for t in b.types]:
        return False
    return a.num_instances == b.num_instances and all(
        np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values()))
