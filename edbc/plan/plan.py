"""Plans: what the runtime needs to execute compiled mini-batches, as one file.

A plan holds the model spec's text and the files it refers to (ONNX cells),
so it is self-contained; for each mini-batch its cell-level graph (for the
reference), the graph the schedule runs on (the same, or its op-level
lowering), the schedule and the memory layout; and the compiled cells its
kernels run (`edbc.cell`), each stored once. `save_plan` and `load_plan` go
through `edbc.artifact`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .. import __version__
from ..artifact import _canonical as canonical_json, decode_artifact, encode_artifact, read_bytes, write_atomic
from ..cell import CompiledCell, compile_cell, compiled_cell_from_json, verify_cell_plan, verify_program
from ..errors import ArtifactError, UsageError, VerificationError
from ..graph.ir import CELL, Graph, NodeType
from ..graph.verify import verify_graph
from ..memory.layout import Layout, verify_layout
from ..memory.operands import MemoryStats, OperandTable, memory_stats, operand_table
from ..passes import CompileOptions
from ..schedule.analysis import lower_bound
from ..schedule.ir import Schedule, verify_schedule
from ..spec.model import ModelSpec
from ..spec.ops import set_reduction_of
from ..spec.program import Program
from .checks import check_plan, check_plan_header, op_program, parse_embedded_spec

MAGIC = b"EDBC-PLAN\n"
FORMAT = "edbc.plan"
# 1.1: the spec's files embedded as parts "files/<path as written in the spec>"
# 1.2: the compiled cells ("cells"), each mini-batch naming the one of each node type ("cells" per batch);
#      a plan without them (1.0, 1.1) has its cells compiled when it is loaded
# 1.3: "inputs.weights", the checkpoint whose vocabularies encoded the tokens (plans without it encoded
#      them with hashed vocabularies, or, before 1.3, with vocabularies built from their data file);
#      "dims", the dimensions the embedded spec was compiled with where they differ from its text
VERSION = (1, 3)
_FILES = "files/"
_VERSIONS = ("edbc", "torch")  # header fields that say which tools wrote the plan, not what it holds


@dataclass(frozen=True, eq=False)
class CompiledBatch:
    cell_graph: Graph
    graph: Graph  # what the schedule runs on: cell_graph itself, or its op-level lowering
    schedule: Schedule
    layout: Layout
    cells: tuple[CompiledCell | None, ...]  # per node type of `graph`: what its kernel runs (None: unused)
    fsm_fallbacks: int = 0  # FSM steps whose state the table lacked, while scheduling
    inference: bool = True  # its cells were compiled for inference (no dropout); plans always are
    known_operands: OperandTable | None = None  # its operand table, where compiling it made one already

    @cached_property
    def _operands(self) -> OperandTable:
        if self.known_operands is not None:
            return self.known_operands
        return operand_table(self.graph, self.schedule, self.layout)

    def operand_table(self) -> OperandTable:
        """How every batch operand is served: a view, a broadcast row or a gather."""
        return self._operands

    def memory_stats(self) -> MemoryStats:
        plans = {t.program: c.plan for t, c in zip(self.graph.types, self.cells) if c is not None}
        return memory_stats(self.graph, self.schedule, self.layout, plans, self._operands)


@dataclass(frozen=True, eq=False, kw_only=True)
class Plan:
    spec: ModelSpec
    spec_text: str
    batches: tuple[CompiledBatch, ...]
    options: CompileOptions  # its policy is the resolved name ("fsm", "agenda", ...)
    batch_size: int
    seed: int
    data: str  # where the instances came from: a path, or "synthetic"
    data_digest: str
    policy_digest: str | None = None  # checksum of the policy file whose FSM made the schedules
    weights_digest: str | None = None  # the checkpoint whose vocabularies encoded the tokens, which runs it
    dims: dict[str, int] = field(default_factory=dict)  # dimensions set over the spec text's (--set)

    @property
    def num_instances(self) -> int:
        return sum(b.cell_graph.num_instances for b in self.batches)


def _param_shapes(spec: ModelSpec, cell: CompiledCell) -> dict:
    return dict({n: p.shape for n, p in spec.params.items()}, **{n: d.shape for n, d in cell.derived.items()})


def verify_plan(plan: Plan) -> None:
    """Every IR of every mini-batch, and every compiled cell against the node type it serves."""
    for b in plan.batches:
        verify_graph(b.cell_graph)
        if b.graph is not b.cell_graph:
            verify_graph(b.graph)
        verify_schedule(b.graph, b.schedule)
        verify_layout(b.graph, b.schedule, b.layout)
        if len(b.cells) != len(b.graph.types):
            raise VerificationError(f"{len(b.cells)} compiled cells for {len(b.graph.types)} node types")
        for t in np.unique(b.schedule.batch_type).tolist():
            cell, program = b.cells[t], b.graph.types[t].program
            if set_reduction_of(program) is not None:  # run by `SetKernel`, with no cell
                if cell is not None:
                    raise VerificationError(f"node type {b.graph.types[t].name} reduces sets; it has no compiled cell")
            elif cell is None or cell.source != program:
                raise VerificationError(f"node type {b.graph.types[t].name} has no compiled cell of its program")
    for cell in {id(c): c for b in plan.batches for c in b.cells if c is not None}.values():
        try:
            verify_program(cell.program, _param_shapes(plan.spec, cell))
            verify_cell_plan(cell.plan)
        except VerificationError as e:
            raise VerificationError(f"compiled cell {cell.source.name}: {e}") from None


def _graph_header(graph: Graph) -> dict:
    if graph.granularity == CELL:
        types = [{"cell": t.name, "batchable": t.batchable} for t in graph.types]
    else:
        types = [{"program": t.program.to_json(), "batchable": t.batchable} for t in graph.types]
    return {"granularity": graph.granularity, "num_instances": graph.num_instances, "types": types}


def _graph_from(head: dict, arrays: dict, prefix: str, spec: ModelSpec, path: str) -> Graph:
    types = []
    for t in head["types"]:
        if "cell" in t:
            if t["cell"] not in spec.cells:
                raise ArtifactError(f"the plan names cell '{t['cell']}', which its spec lacks", path=path)
            program = spec.cells[t["cell"]]
        else:
            program = op_program(spec, t["program"], path)
        types.append(NodeType(program.name, program, bool(t["batchable"])))
    cols = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return Graph(head["granularity"], tuple(types), num_instances=head["num_instances"], **cols)


def _encode_plan(plan: Plan) -> tuple[dict, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {_FILES + rel: np.frombuffer(data, dtype=np.uint8)
                                     for rel, data in plan.spec.files.items()}
    cells: dict[int, int] = {}  # id of a compiled cell -> its index in the file
    cell_records = []
    batches = []
    for i, b in enumerate(plan.batches):
        entry = {"cell_graph": _graph_header(b.cell_graph),
                 "arenas": [list(s) for s in b.layout.arena_shapes],
                 "layout_mode": b.layout.mode, "policy": b.schedule.policy}
        if plan.policy_digest is not None:
            entry["fsm_fallbacks"] = b.fsm_fallbacks
        for k, v in b.cell_graph.arrays().items():
            arrays[f"{i}/cell/{k}"] = v
        if b.graph is not b.cell_graph:
            entry["graph"] = _graph_header(b.graph)
            for k, v in b.graph.arrays().items():
                arrays[f"{i}/exec/{k}"] = v
        for k, v in b.schedule.arrays().items():
            arrays[f"{i}/schedule/{k}"] = v
        for k, v in b.layout.arrays().items():
            arrays[f"{i}/layout/{k}"] = v
        for c in b.cells:
            if c is not None and id(c) not in cells:
                cells[id(c)] = len(cell_records)
                cell_records.append(c.to_json())
        entry["cells"] = [-1 if c is None else cells[id(c)] for c in b.cells]
        batches.append(entry)
    inputs = {"spec": plan.spec.digest, "data": plan.data_digest}
    if plan.policy_digest is not None:
        inputs["policy"] = plan.policy_digest
    if plan.weights_digest is not None:
        inputs["weights"] = plan.weights_digest
    header = {
        "edbc": __version__, "torch": torch.__version__.split("+")[0], "seed": plan.seed,
        "inputs": inputs,
        "spec_text": plan.spec_text, "data": plan.data, "policy": plan.options.policy,
        "granularity": plan.options.granularity, "memory": plan.options.memory, "batch_size": plan.batch_size,
        "minibatches": batches, "cells": cell_records,
    }
    if plan.dims:
        header["dims"] = plan.dims
    return header, arrays


def save_plan(plan: Plan, path: str, inputs: Iterable[str | None] = ()) -> None:
    """Write `plan` atomically; `inputs` (spec, data, policy files) are never overwritten."""
    header, arrays = _encode_plan(plan)
    write_atomic(path, encode_artifact(MAGIC, FORMAT, VERSION, header, arrays), inputs)


def plan_digest(plan: Plan) -> str:
    """sha256 of what a plan holds, whichever edbc and torch versions wrote it: golden tests
    compare it, so that any change that alters plans says so."""
    header, arrays = _encode_plan(plan)
    for key in _VERSIONS:
        del header[key]
    h = hashlib.sha256(canonical_json(header))
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{list(a.shape)}".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def load_plan(path: str) -> Plan:
    path = str(path)
    head, arrays = decode_artifact(path, read_bytes(path, "plan"), MAGIC, FORMAT, VERSION[0])
    check_plan_header(head, arrays, path)
    try:
        files = {k[len(_FILES):]: v.tobytes() for k, v in arrays.items() if k.startswith(_FILES)}
        spec = parse_embedded_spec(head["spec_text"], path, files, head.get("dims"))
        if spec.digest != head["inputs"]["spec"]:
            raise ArtifactError("the embedded spec does not match the spec the plan was compiled for",
                                path=path)
        shapes = {name: p.shape for name, p in spec.params.items()}
        stored = [compiled_cell_from_json(c, shapes, path) for c in head["cells"]] if "cells" in head else None
        compiled: dict[Program, CompiledCell] = {}  # older plans: cells compiled now, once per program
        batches = []
        for i, entry in enumerate(head["minibatches"]):
            cell_graph = _graph_from(entry["cell_graph"], arrays, f"{i}/cell/", spec, path)
            graph = _graph_from(entry["graph"], arrays, f"{i}/exec/", spec, path) \
                if "graph" in entry else cell_graph
            schedule = Schedule(entry["policy"], **{k[len(f"{i}/schedule/"):]: v for k, v in arrays.items()
                                                    if k.startswith(f"{i}/schedule/")})
            layout = Layout(entry["layout_mode"], tuple(tuple(s) for s in entry["arenas"]),
                            **{k[len(f"{i}/layout/"):]: v for k, v in arrays.items()
                               if k.startswith(f"{i}/layout/")})
            if stored is None:
                for t in graph.types:
                    if t.program not in compiled and set_reduction_of(t.program) is None:
                        compiled[t.program] = compile_cell(t.program, shapes, layout.mode)
                cells = tuple(compiled.get(t.program) for t in graph.types)
            else:
                refs = entry["cells"]
                if not isinstance(refs, list) or len(refs) != len(graph.types) or any(
                        type(c) is not int or not -1 <= c < len(stored) for c in refs):
                    raise ArtifactError(f"mini-batch {i}: its compiled cells are not one index per node type",
                                        path=path)
                cells = tuple(None if c == -1 else stored[c] for c in refs)
                if any(c is not None and c.source != t.program for c, t in zip(cells, graph.types)):
                    raise ArtifactError(f"mini-batch {i}: its compiled cells do not match its node types", path=path)
            batches.append(CompiledBatch(cell_graph, graph, schedule, layout, cells,
                                         int(entry.get("fsm_fallbacks", 0))))
        options = CompileOptions(head["policy"], head["granularity"], head["memory"])
        plan = Plan(spec=spec, spec_text=head["spec_text"], batches=tuple(batches), options=options,
                    batch_size=int(head["batch_size"]), seed=int(head["seed"]), data=head["data"],
                    data_digest=head["inputs"]["data"], policy_digest=head["inputs"].get("policy"),
                    weights_digest=head["inputs"].get("weights"), dims=dict(head.get("dims", {})))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(f"corrupt plan: missing or malformed field ({e})", path=path) from None
    except UsageError as e:  # compile options the plan names that this edbc does not know
        raise ArtifactError(f"corrupt plan: {e.message}", path=path) from None
    check_plan(plan, path)  # every IR verified, the stored cells included
    return plan


def format_plan(plan: Plan, path: str | None = None) -> str:
    """The `inspect` summary: sizes, types, batches against the lower bound, bytes."""
    nodes = sum(b.graph.num_nodes for b in plan.batches)
    batches = sum(b.schedule.num_batches for b in plan.batches)
    bound = sum(lower_bound(b.graph) for b in plan.batches)
    lines = [
        f"plan {path or ''}".rstrip(),
        f"  model        {plan.spec.name} (spec {plan.spec.digest[:12]})",
        f"  data         {plan.data} ({plan.num_instances} instances, batch size {plan.batch_size})",
        f"  policy       {plan.options.policy} at {plan.options.granularity} level, memory {plan.options.memory}"
        + (f" (policy file {plan.policy_digest[:12]}, "
           f"{sum(b.fsm_fallbacks for b in plan.batches)} FSM fallbacks)" if plan.policy_digest else ""),
        "  weights      " + (f"checkpoint {plan.weights_digest[:12]} (run it with --weights)"
                              if plan.weights_digest else "the spec's seeded initialisers"),
        f"  mini-batches {len(plan.batches)}",
        f"  nodes        {nodes}",
        f"  batches      {batches} (lower bound {bound})",
    ]
    if plan.batches:
        first = plan.batches[0]
        counts = np.bincount(first.graph.node_type, minlength=len(first.graph.types))
        lines.append("  types (first mini-batch):")
        for t, c in zip(first.graph.types, counts.tolist()):
            lines.append(f"    {t.name:<36} {c:>7} nodes")
        arena_bytes = sum(int(np.prod(s)) * (r + 1) * 4 for b in plan.batches
                          for s, r in zip(b.layout.arena_shapes, b.layout.arena_rows.tolist()))
        lines.append(f"  arenas       {arena_bytes / 2**20:.1f} MiB over all mini-batches")
    return "\n".join(lines)
