"""Plans: what the runtime needs to execute compiled mini-batches, as one file.

A plan holds the model spec's text and the files it refers to (ONNX cells),
so it is self-contained, and for each mini-batch its cell-level graph (for the
reference), the graph the schedule runs on (the same, or its op-level
lowering), the schedule and the memory layout. `save_plan` and `load_plan` go
through `edbc.artifact`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .. import __version__
from ..artifact import decode_artifact, encode_artifact, read_bytes, write_atomic
from ..errors import ArtifactError
from ..graph.ir import CELL, Graph, NodeType
from ..graph.verify import verify_graph
from ..memory.layout import Layout, verify_layout
from ..schedule.analysis import lower_bound
from ..schedule.ir import Schedule, verify_schedule
from ..spec.model import ModelSpec
from .checks import check_plan, check_plan_header, op_program, parse_embedded_spec

MAGIC = b"EDBC-PLAN\n"
FORMAT = "edbc.plan"
VERSION = (1, 1)  # 1.1: the spec's files embedded as parts "files/<path as written in the spec>"
_FILES = "files/"


@dataclass(frozen=True, eq=False)
class CompiledBatch:
    cell_graph: Graph
    graph: Graph  # what the schedule runs on: cell_graph itself, or its op-level lowering
    schedule: Schedule
    layout: Layout
    fsm_fallbacks: int = 0  # FSM steps that fell back to typewise while scheduling


@dataclass(frozen=True, eq=False)
class Plan:
    spec: ModelSpec
    spec_text: str
    batches: tuple[CompiledBatch, ...]
    policy: str
    granularity: str
    memory: str
    batch_size: int
    seed: int
    data: str  # where the instances came from: a path, or "synthetic"
    data_digest: str
    policy_digest: str | None = None  # checksum of the policy file whose FSM made the schedules

    @property
    def num_instances(self) -> int:
        return sum(b.cell_graph.num_instances for b in self.batches)


def verify_plan(plan: Plan) -> None:
    for b in plan.batches:
        verify_graph(b.cell_graph)
        if b.graph is not b.cell_graph:
            verify_graph(b.graph)
        verify_schedule(b.graph, b.schedule)
        verify_layout(b.graph, b.schedule, b.layout)


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


def save_plan(plan: Plan, path: str, inputs: Iterable[str | None] = ()) -> None:
    """Write `plan` atomically; `inputs` (spec, data, policy files) are never overwritten."""
    arrays: dict[str, np.ndarray] = {_FILES + rel: np.frombuffer(data, dtype=np.uint8)
                                     for rel, data in plan.spec.files.items()}
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
        batches.append(entry)
    inputs = {"spec": plan.spec.digest, "data": plan.data_digest}
    if plan.policy_digest is not None:
        inputs["policy"] = plan.policy_digest
    header = {
        "edbc": __version__, "torch": torch.__version__.split("+")[0], "seed": plan.seed,
        "inputs": inputs,
        "spec_text": plan.spec_text, "data": plan.data, "policy": plan.policy,
        "granularity": plan.granularity, "memory": plan.memory, "batch_size": plan.batch_size,
        "minibatches": batches,
    }
    write_atomic(path, encode_artifact(MAGIC, FORMAT, VERSION, header, arrays), inputs)


def load_plan(path: str) -> Plan:
    path = str(path)
    head, arrays = decode_artifact(path, read_bytes(path, "plan"), MAGIC, FORMAT, VERSION[0])
    check_plan_header(head, arrays, path)
    try:
        files = {k[len(_FILES):]: v.tobytes() for k, v in arrays.items() if k.startswith(_FILES)}
        spec = parse_embedded_spec(head["spec_text"], path, files)
        if spec.digest != head["inputs"]["spec"]:
            raise ArtifactError("the embedded spec does not match the spec the plan was compiled for",
                                path=path)
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
            batches.append(CompiledBatch(cell_graph, graph, schedule, layout, int(entry.get("fsm_fallbacks", 0))))
        plan = Plan(spec, head["spec_text"], tuple(batches), head["policy"], head["granularity"],
                    head["memory"], int(head["batch_size"]), int(head["seed"]), head["data"],
                    head["inputs"]["data"], head["inputs"].get("policy"))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"corrupt plan: missing or malformed field ({e})", path=path) from None
    check_plan(plan, path)
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
        f"  policy       {plan.policy} at {plan.granularity} level, memory {plan.memory}"
        + (f" (policy file {plan.policy_digest[:12]}, "
           f"{sum(b.fsm_fallbacks for b in plan.batches)} FSM fallbacks)" if plan.policy_digest else ""),
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
