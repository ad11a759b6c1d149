"""Tests for the pass lists of `edbc.passes`: verifiers between passes, --dump-after, what plans
and `inspect` say about compiled cells, and which stages the runtime may import."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edbc import passes
from edbc.api import CompileOptions, compile_batch, compile_plan, load_data, load_spec
from edbc.cell import compile_cell
from edbc.errors import EXIT_USAGE, VerificationError
from edbc.plan import save_plan
from edbc.runtime import Runtime
from edbc.schedule import Schedule
from edbc.settings import MODELS_DIR
from edbc.spec.program import Op

from .test_cli import edbc, one_line_error

MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def _kernel_steps(kernel) -> int:
    """Internal batches a kernel's generated source runs: one assignment of batch results each."""
    n_inputs = kernel.program.n_inputs
    return sum(1 for line in kernel.source.splitlines()
               if (m := re.match(r"\s+e(\d+)(?:, e\d+)* = ", line)) and int(m.group(1)) >= n_inputs)


@pytest.mark.parametrize("model", MODELS)
def test_inspect_dump_cells_prints_what_the_kernels_run(model, tmp_path):
    spec, text = load_spec(MODELS_DIR / f"{model}.yaml")
    plan = compile_plan(spec, text, load_data(spec, None, limit=6, seed=3), batch_size=6, options="agenda")
    path = tmp_path / "m.plan"
    save_plan(plan, path)
    r = edbc("inspect", path, "--dump", "cells")
    assert r.exit_code == 0, r.output
    printed = {m.group(1): int(n.group(1)) for m, n in zip(re.finditer(r"^cell (\w+)\(", r.output, re.M),
                                                         re.finditer(r"^  (\d+) internal batches", r.output, re.M))}
    runtime = Runtime(spec)
    kernels = {c.program.name: runtime.kernel(c) for c in plan.batches[0].cells if c is not None}
    assert printed == {name: _kernel_steps(k) for name, k in kernels.items()}
    assert printed == {name: len(k.plan.steps) for name, k in kernels.items()}
    # the summary counts the same cells: torch calls inside kernels, summed over batches
    summary = edbc("inspect", path).output
    calls = re.search(r"torch calls inside cell kernels\s+(\d+)", summary).group(1)
    b = plan.batches[0]
    # (a set reduction has no cell: its kernel is one call)
    assert int(calls) == sum(len(b.cells[t].plan.steps) if b.cells[t] is not None else 1
                             for t in b.schedule.batch_type.tolist())


def test_the_verifier_names_the_cell_pass_that_broke(monkeypatch, treelstm):
    def broken(program):  # reads a value that nothing computes
        op = program.ops[-1]
        bad = Op(op.kind, (len(program.values) + 5,) + op.args[1:], op.outs, op.attrs)
        return replace(program, ops=program.ops[:-1] + (bad,))

    cell_passes = list(passes.CELL_PASSES)
    i = [p.name for p in cell_passes].index("fuse_lerp")
    cell_passes[i] = replace(cell_passes[i], run=passes._rewrite(broken))
    monkeypatch.setattr(passes, "CELL_PASSES", tuple(cell_passes))
    shapes = {n: p.shape for n, p in treelstm.params.items()}
    with pytest.raises(VerificationError, match=r"after pass fuse_lerp is invalid \(passes run: strip_dropout, fold_embeddings, "
                                                r"fuse_lerp\): cell node op \d+ \(mul\): reads value \d+ before"):
        compile_cell(treelstm.cells["node"], shapes, "pq", verify=True)


def test_the_verifier_names_the_batch_pass_that_broke(monkeypatch, treelstm, synthetic_trees):
    def drop_last_batch(s):
        s = passes._schedule(s)
        sched = s.schedule
        cut = int(sched.ptr[-2])
        return replace(s, schedule=Schedule(sched.policy, sched.ptr[:-1], sched.nodes[:cut], sched.batch_type[:-1]))

    batch_passes = list(passes.BATCH_PASSES)
    batch_passes[2] = replace(batch_passes[2], run=drop_last_batch)
    monkeypatch.setattr(passes, "BATCH_PASSES", tuple(batch_passes))
    monkeypatch.setattr("edbc.api.BATCH_PASSES", tuple(batch_passes))
    with pytest.raises(VerificationError, match=r"after pass schedule is invalid \(passes run: build_graph, "
                                                r"lower_to_ops, schedule\)"):
        compile_batch(treelstm, synthetic_trees, "agenda", verify=True)


def test_operands_are_prepared_for_a_run_and_planned_where_it_pays(treelstm, synthetic_trees):
    from edbc.api import Compiler
    from edbc.memory.operands import operand_table

    for runs, mode in ((1, "none"), (10**6, "pq")):
        timings: dict[str, float] = {}
        c = Compiler(treelstm, CompileOptions("agenda", memory="pq"), verify=True, runs=runs) \
            .compile_batch(synthetic_trees, timings)
        assert c.layout.mode == mode and "prepare" in timings
        expected = operand_table(c.graph, c.schedule, c.layout)
        if mode == "none":  # the table the cost model read is the run's
            assert all(np.array_equal(getattr(c.known_operands, f), getattr(expected, f))
                       for f in ("batch", "position", "kind", "arena", "first_row", "rows_read", "ptr", "rows"))
        else:  # planned after the table was made: the run makes the new one
            assert c.known_operands is None
    assert compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", memory="none")).known_operands is None


def test_the_operand_verifier_rejects_a_malformed_table(treelstm, synthetic_trees):
    from edbc.memory.operands import GATHER_CODE, VIEW_CODE, format_operands, verify_operands

    c = compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", memory="none"))
    table = c.operand_table()
    verify_operands(table, c.schedule)
    gather = int(np.flatnonzero(table.kind == GATHER_CODE)[0])
    assert f"gather {table.rows_read[gather]}" in format_operands(table, max_batches=None)
    kind = table.kind.copy()
    kind[gather] = VIEW_CODE
    with pytest.raises(VerificationError, match=f"batch {table.batch[gather]} operand {table.position[gather]} "
                                                r"is kind 0 with \d+ gather rows listed"):
        verify_operands(replace(table, kind=kind), c.schedule)
    with pytest.raises(VerificationError, match="not batch-major"):
        verify_operands(replace(table, batch=table.batch[::-1].copy()), c.schedule)


def test_every_bundled_cell_passes_every_verifier():
    for model in MODELS:
        spec, _ = load_spec(MODELS_DIR / f"{model}.yaml")
        shapes = {n: p.shape for n, p in spec.params.items()}
        for program in spec.cells.values():
            for memory in ("pq", "none"):
                compile_cell(program, shapes, memory, verify=True)


def test_dump_after_prints_the_ir_after_that_pass(tmp_path):
    out = tmp_path / "t.plan"
    r = edbc("compile", MODELS_DIR / "treelstm.yaml", "--limit", "4", "--policy", "agenda", "-o", out,
             "--dump-after", "fuse_addcmul")
    assert r.exit_code == 0, r.output
    assert "cell node(" in r.stdout and "addcmul(" in r.stdout and "internal batches" not in r.stdout
    r = edbc("compile", MODELS_DIR / "treelstm.yaml", "--limit", "4", "--policy", "agenda", "-o", out,
             "--dump-after", "plan_cell_memory")
    assert r.stdout.count("internal batches") == 3  # leaf, node and classify, each once
    r = edbc("compile", MODELS_DIR / "treelstm.yaml", "--limit", "4", "--policy", "agenda", "-o", out,
             "--dump-after", "schedule")
    assert r.stdout.startswith("schedule (agenda):")
    r = edbc("compile", MODELS_DIR / "treelstm.yaml", "--limit", "4", "-o", out, "--dump-after", "nope")
    one_line_error(r, EXIT_USAGE, "--dump-after: unknown pass 'nope'", "fold_embeddings", "plan_memory")


def test_pass_names_are_unique_and_cover_both_levels():
    assert len(set(passes.PASS_NAMES)) == len(passes.PASS_NAMES)
    assert passes.PASS_NAMES[:4] == ("build_graph", "lower_to_ops", "schedule", "plan_memory")
    assert "schedule_cell" in passes.PASS_NAMES and "plan_cell_memory" in passes.PASS_NAMES


def test_runtime_imports_neither_memory_planning_nor_the_cell_rewrites():
    runtime = Path(__file__).resolve().parent.parent / "edbc" / "runtime"
    for path in runtime.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not re.search(r"memory|rewrite|passes|cell\.(layout|schedule)", module), (path.name, module)


def test_plans_run_their_stored_cells(treelstm):
    spec, text = load_spec(MODELS_DIR / "treelstm.yaml")
    plan = compile_plan(spec, text, load_data(spec, None, limit=8, seed=1), batch_size=4,
                        options=CompileOptions("agenda", "op", "pq"))
    b = plan.batches[0]
    used = set(np.unique(b.schedule.batch_type).tolist())
    assert {t for t, c in enumerate(b.cells) if c is not None} == used
    assert all(b.cells[t].source == b.graph.types[t].program for t in used)
