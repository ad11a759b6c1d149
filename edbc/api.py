"""The Python API: everything the CLI does, as functions.

The compiler is a list of passes over the IRs, in this order:

    build_graph    instances -> cell-level graph        (edbc.graph.build)
    lower_to_ops   cell-level -> op-level graph          (edbc.graph.lower, --granularity op)
    schedule       graph -> batches                      (edbc.schedule, --policy)
    plan_memory    graph + batches -> batches, layout    (edbc.memory, --memory: pq or none)

`compile_batch` runs them (with the verifiers between passes when asked);
`run` compiles and executes mini-batches and reports; `run_plan` executes a
saved plan; `memory_comparison` gives a plan's gathers with and without
memory planning.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifact import file_digest
from .data import encode, read_instances, synthesize
from .errors import UsageError, VerificationError
from .graph import CELL, OP, build_graph, lower_to_ops, verify_graph
from .memory import PLANNERS, verify_layout
from .memory.operands import MemoryStats, NO_STATS, cell_plans, memory_stats
from .plan import CompiledBatch, Plan
from .runtime import Runtime
from .runtime.limits import check_fits
from .schedule import lower_bound, schedule, verify_schedule
from .schedule.policies import POLICIES
from .settings import CHECK_TOLERANCE, DEFAULT_MEMORY, DEFAULT_MODEL, DEFAULT_SYNTHETIC_INSTANCES
from .spec import ModelSpec, load_model

GRANULARITIES = (CELL, OP)


@dataclass(frozen=True, eq=False)
class Dataset:
    instances: list  # encoded: token ids filled in
    source: str  # a path, or "synthetic"
    digest: str  # sha256 of the data file, or "synthetic:<seed>:<n>"


def load_spec(path: str | Path | None = None) -> tuple[ModelSpec, str]:
    """A model spec and its text; the bundled TreeLSTM when `path` is None."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    spec = load_model(path)
    return spec, path.read_text(encoding="utf-8")


def load_data(spec: ModelSpec, data: str | None = None, limit: int | None = None, seed: int = 0) -> Dataset:
    """Read `data` with the reader of the spec's structure kind, or generate synthetic instances."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if data is None:
        n = limit or DEFAULT_SYNTHETIC_INSTANCES
        raw = synthesize(spec, n, seed)
        source, digest = "synthetic", f"synthetic:{spec.kind}:{seed}:{n}"
    else:
        raw = read_instances(spec.kind, data, limit)
        source, digest = str(data), file_digest(data)
    instances, _ = encode(raw, spec.vocabs)
    return Dataset(instances, source, digest)


def minibatches(instances: list, batch_size: int) -> list[list]:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    return [instances[i:i + batch_size] for i in range(0, len(instances), batch_size)]


def check_options(policy: str, granularity: str, memory: str) -> None:
    if policy not in POLICIES:
        raise UsageError(f"unknown policy '{policy}'; expected one of: {', '.join(POLICIES)}")
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity '{granularity}'; expected one of: {', '.join(GRANULARITIES)}")
    if memory not in PLANNERS:
        raise UsageError(f"unknown memory mode '{memory}'; expected one of: {', '.join(PLANNERS)}")


def compile_batch(spec: ModelSpec, instances: list, policy: str = "agenda", granularity: str = CELL,
                  memory: str = DEFAULT_MEMORY, verify: bool = False,
                  timings: dict[str, float] | None = None) -> CompiledBatch:
    """Run the passes on one mini-batch. `timings`, if given, receives seconds per pass."""
    check_options(policy, granularity, memory)
    clock = time.perf_counter
    t0 = clock()
    cell_graph = build_graph(spec, instances)
    graph = lower_to_ops(cell_graph) if granularity == OP else cell_graph
    t1 = clock()
    sched = schedule(graph, policy)
    t2 = clock()
    sched, layout = PLANNERS[memory](graph, sched)
    t3 = clock()
    if verify:
        verify_graph(cell_graph)
        if graph is not cell_graph:
            verify_graph(graph)
        verify_schedule(graph, sched)
        verify_layout(graph, sched, layout)
    if timings is not None:
        timings.update(graph=t1 - t0, schedule=t2 - t1, memory=t3 - t2)
    return CompiledBatch(cell_graph, graph, sched, layout)


def compile_plan(spec: ModelSpec, spec_text: str, dataset: Dataset, batch_size: int, policy: str = "agenda",
                 granularity: str = CELL, memory: str = DEFAULT_MEMORY, seed: int = 0, verify: bool = True) -> Plan:
    batches = tuple(compile_batch(spec, mb, policy, granularity, memory, verify)
                    for mb in minibatches(dataset.instances, batch_size))
    return Plan(spec, spec_text, batches, policy, granularity, memory, batch_size, seed,
                dataset.source, dataset.digest)


@dataclass
class RunReport:
    model: str
    policy: str
    granularity: str
    memory: str
    device: str
    threads: int
    batch_size: int
    num_instances: int = 0
    num_minibatches: int = 0
    num_batches: int = 0
    lower_bound: int = 0
    gathers: int = 0
    gather_bytes: int = 0
    max_abs_error: float | None = None
    per_minibatch_ms: list[float] = field(default_factory=list)
    phase_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ms_per_minibatch(self) -> float:
        return statistics.median(self.per_minibatch_ms) if self.per_minibatch_ms else 0.0

    @property
    def check_passed(self) -> bool | None:
        return None if self.max_abs_error is None else self.max_abs_error <= CHECK_TOLERANCE

    def to_json(self) -> dict:
        out = {
            "model": self.model, "policy": self.policy, "granularity": self.granularity,
            "memory": self.memory, "device": self.device, "threads": self.threads,
            "batch_size": self.batch_size, "num_instances": self.num_instances,
            "num_minibatches": self.num_minibatches, "num_batches": self.num_batches,
            "lower_bound": self.lower_bound, "gathers": self.gathers, "gather_bytes": self.gather_bytes,
            "ms_per_minibatch": round(self.ms_per_minibatch, 4),
            "instances_per_s": round(self.num_instances / max(sum(self.per_minibatch_ms), 1e-9) * 1e3, 2),
            "phase_ms": {k: round(statistics.median(v), 4) for k, v in self.phase_ms.items()},
        }
        if self.max_abs_error is not None:
            out["max_abs_error"] = self.max_abs_error
            out["check"] = "passed" if self.check_passed else "failed"
        return out

    def add(self, compiled: CompiledBatch, stats, phases: dict[str, float], error: float | None) -> None:
        self.num_instances += compiled.cell_graph.num_instances
        self.num_minibatches += 1
        self.num_batches += compiled.schedule.num_batches
        self.lower_bound += lower_bound(compiled.graph)
        self.gathers += stats.gathers
        self.gather_bytes += stats.gather_bytes
        for k, v in phases.items():
            self.phase_ms.setdefault(k, []).append(v * 1e3)
        self.per_minibatch_ms.append(sum(phases.values()) * 1e3)
        if error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, error)


def _execute(runtime: Runtime, compiled: CompiledBatch, phases: dict[str, float], index: int):
    check_fits(compiled.layout, runtime.device, f"mini-batch {index}")
    t0 = time.perf_counter()
    executable = runtime.prepare(compiled.graph, compiled.schedule, compiled.layout)
    out = executable.run()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    phases["execute"] = time.perf_counter() - t0
    return out, executable.stats


def _error(runtime: Runtime, compiled: CompiledBatch, out: torch.Tensor) -> float:
    ref = runtime.reference(compiled.cell_graph)
    if ref.shape != out.shape:
        raise VerificationError(f"batched results have shape {list(out.shape)}, the reference {list(ref.shape)}")
    return float((out - ref).abs().max().item()) if out.numel() else 0.0


def run(spec: ModelSpec, dataset: Dataset, batch_size: int = 64, policy: str = "agenda",
        granularity: str = CELL, memory: str = DEFAULT_MEMORY, device: str = "cpu", check: bool = False,
        verify: bool = False) -> RunReport:
    """Compile and execute every mini-batch of `dataset`, end to end, timing each."""
    check_options(policy, granularity, memory)
    runtime = Runtime(spec, device)
    report = RunReport(spec.name, policy, granularity, memory, device, torch.get_num_threads(), batch_size)
    for index, mb in enumerate(minibatches(dataset.instances, batch_size)):
        phases: dict[str, float] = {}
        compiled = compile_batch(spec, mb, policy, granularity, memory, verify, phases)
        out, stats = _execute(runtime, compiled, phases, index)
        report.add(compiled, stats, phases, _error(runtime, compiled, out) if check else None)
    return report


def run_plan(plan: Plan, device: str = "cpu", check: bool = False) -> RunReport:
    """Execute a compiled plan; timings cover execution only (compilation happened before)."""
    runtime = Runtime(plan.spec, device)
    report = RunReport(plan.spec.name, plan.policy, plan.granularity, plan.memory, device,
                       torch.get_num_threads(), plan.batch_size)
    for index, compiled in enumerate(plan.batches):
        phases: dict[str, float] = {}
        out, stats = _execute(runtime, compiled, phases, index)
        report.add(compiled, stats, phases, _error(runtime, compiled, out) if check else None)
    return report


def memory_comparison(plan: Plan) -> dict[str, MemoryStats]:
    """Gathers and bytes of every mini-batch of `plan`, summed, under each memory mode.

    The plan's own mode uses its layout; the others are planned now on the same
    schedules (`none` lays the arenas out in run order, `pq` plans them).
    """
    shapes = {name: p.shape for name, p in plan.spec.params.items()}
    totals = {mode: NO_STATS for mode in PLANNERS}
    for b in plan.batches:
        for mode, planner in PLANNERS.items():
            sched, layout = (b.schedule, b.layout) if mode == plan.memory else planner(b.graph, b.schedule)
            totals[mode] = totals[mode] + memory_stats(b.graph, sched, layout, cell_plans(b.graph, shapes, mode))
    return totals
