"""The Python API: everything the CLI does, as functions.

The compiler is a list of passes over the IRs, in this order:

    build_graph    instances -> cell-level graph        (edbc.graph.build)
    lower_to_ops   cell-level -> op-level graph          (edbc.graph.lower, --granularity op)
    schedule       graph -> batches                      (edbc.schedule, edbc.policy; --policy)
    plan_memory    graph + batches -> batches, layout    (edbc.memory, --memory: pq or none)

`compile_batch` runs them (with the verifiers between passes when asked);
`run` compiles and executes mini-batches and reports; `run_plan` executes a
saved plan; `memory_comparison` gives a plan's gathers with and without
memory planning. `resolve_policy` turns a `--policy` option into a
`BatchingPolicy`: a heuristic, a learned FSM from a policy file, or the exact search.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifact import file_digest
from .data import encode, read_instances, synthesize
from .errors import SpecError, UsageError, VerificationError
from .inputs import read_input_text
from .graph import CELL, DAG, OP, Graph, build_graph, lower_to_ops, verify_graph
from .memory import PLANNERS, verify_layout
from .memory.operands import MemoryStats, NO_STATS, cell_plans, memory_stats
from .plan import CompiledBatch, Plan
from .policy.file import DAG_MODEL, PolicyFile, check_policy, load_policy
from .policy.fsm import fsm_schedule
from .policy.optimal import optimal_schedule
from .runtime import Runtime
from .runtime.limits import check_minibatch_fits
from .schedule import Schedule, lower_bound, schedule, verify_schedule
from .schedule.policies import POLICIES
from .settings import CHECK_TOLERANCE, DEFAULT_MEMORY, DEFAULT_MODEL, DEFAULT_SYNTHETIC_INSTANCES, PLANS_DIR
from .spec import ModelSpec, parse_model

GRANULARITIES = (CELL, OP)
POLICY_NAMES = (*POLICIES, "fsm", "optimal")


@dataclass(frozen=True, eq=False)
class Dataset:
    instances: list  # encoded: token ids filled in
    source: str  # a path, or "synthetic"
    digest: str  # sha256 of the data file, or "synthetic:<seed>:<n>"


def load_spec(path: str | Path | None = None) -> tuple[ModelSpec, str]:
    """A model spec and its text; the bundled TreeLSTM when `path` is None."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    text = read_input_text(path, "model spec", SpecError)
    return parse_model(text, str(path)), text


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


def training_data(spec: ModelSpec, data: str | None = None, heldout: str | None = None, limit: int | None = None,
                  seed: int = 0) -> tuple[Dataset, Dataset]:
    """Training and held-out instances for `edbc train-policy`. Without `heldout`, the last 10%
    of the training instances are held out (synthetic data: instances of seed + 1)."""
    train = load_data(spec, data, limit, seed)
    if heldout is not None:
        return train, load_data(spec, heldout, None, seed)
    if data is None:
        n = len(train.instances)
        return train, load_data(spec, None, max(n // 10, 1), seed + 1)
    if len(train.instances) < 2:
        raise UsageError(f"{data}: holding out 10% needs at least 2 instances; give --heldout")
    cut = len(train.instances) - max(len(train.instances) // 10, 1)
    return (Dataset(train.instances[:cut], train.source, train.digest),
            Dataset(train.instances[cut:], f"{train.source} (last 10%)", train.digest))


def minibatches(instances: list, batch_size: int) -> list[list]:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    return [instances[i:i + batch_size] for i in range(0, len(instances), batch_size)]


@dataclass(frozen=True, eq=False)
class BatchingPolicy:
    """A resolved `--policy`: a heuristic of `POLICIES`, the exact search, or a learned FSM."""

    name: str  # what reports and plans call it: "agenda", "optimal", "fsm", ...
    policy_file: PolicyFile | None = None  # the FSM's table, for "fsm"
    path: str | None = None  # where the policy file was read

    @property
    def digest(self) -> str | None:
        """The policy file's checksum, which plans and reports record."""
        return self.policy_file.digest if self.policy_file is not None else None

    def schedule(self, graph: Graph) -> tuple[Schedule, int]:
        """The schedule of `graph`, and how many FSM steps fell back to typewise."""
        if self.policy_file is not None:
            result = fsm_schedule(graph, self.policy_file.fsm)
            return result.schedule, result.fallbacks
        if self.name == "optimal":
            return optimal_schedule(graph), 0
        return schedule(graph, self.name), 0


def shipped_policy_path(model: str, granularity: str) -> Path:
    """Where the policy shipped for `model` at `granularity` lives (it may not exist)."""
    level = "" if granularity == CELL else f".{granularity}"
    return PLANS_DIR / f"{model}{level}.policy.json"


def resolve_policy(policy: "str | BatchingPolicy | None", spec: ModelSpec | None,
                   granularity: str) -> BatchingPolicy:
    """`policy` is a name of `POLICY_NAMES`, a policy file's path, or None: `fsm` where a policy
    is shipped for the model and granularity, else `agenda`. `spec` None means bare typed DAGs."""
    if isinstance(policy, BatchingPolicy):
        return policy
    if policy is None:
        shipped = spec is not None and shipped_policy_path(spec.name, granularity).exists()
        policy = "fsm" if shipped else "agenda"
    if policy in POLICIES or policy == "optimal":
        return BatchingPolicy(policy)
    if policy == "fsm":
        if spec is None:
            raise UsageError("--policy fsm: bare typed DAGs have no shipped policy; train one with "
                             "`edbc train-policy --graphs FILE... -o P` and give --policy P")
        path = shipped_policy_path(spec.name, granularity)
        if not path.exists():
            raise UsageError(f"--policy fsm: no policy is shipped for model '{spec.name}' at {granularity} "
                             f"level ({path}); train one with `edbc train-policy` and give its path")
    elif _is_policy_path(policy):
        path = Path(policy)
    else:
        raise UsageError(f"unknown policy '{policy}'; expected one of: {', '.join(POLICY_NAMES)}, "
                         "or a policy file")
    loaded = _load_policy(path)
    check_policy(loaded, str(path), spec.name if spec is not None else DAG_MODEL,
                 spec.digest if spec is not None else None, DAG if spec is None else granularity)
    return BatchingPolicy("fsm", loaded, str(path))


def _load_policy(path: Path) -> PolicyFile:
    """`load_policy`, memoised while the file is unchanged: `compile_batch(..., "fsm")` per mini-batch
    must not parse the file each time."""
    try:
        stat = path.stat()
    except OSError:
        return load_policy(path)  # raises the error that names the problem
    return _load_policy_of(str(path), str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_policy_of(path: str, resolved: str, mtime_ns: int, size: int) -> PolicyFile:
    return load_policy(path)


def _is_policy_path(policy: str) -> bool:
    return "/" in policy or policy.endswith(".json") or Path(policy).is_file()


def check_options(policy: "str | BatchingPolicy | None", granularity: str, memory: str) -> None:
    """Names the options' mistakes before any work (a policy file is read by `resolve_policy`)."""
    if isinstance(policy, str) and policy not in POLICY_NAMES and not _is_policy_path(policy):
        raise UsageError(f"unknown policy '{policy}'; expected one of: {', '.join(POLICY_NAMES)}, "
                         "or a policy file")
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity '{granularity}'; expected one of: {', '.join(GRANULARITIES)}")
    if memory not in PLANNERS:
        raise UsageError(f"unknown memory mode '{memory}'; expected one of: {', '.join(PLANNERS)}")


def compile_batch(spec: ModelSpec, instances: list, policy: str | BatchingPolicy | None = None,
                  granularity: str = CELL, memory: str = DEFAULT_MEMORY, verify: bool = False,
                  timings: dict[str, float] | None = None) -> CompiledBatch:
    """Run the passes on one mini-batch. `policy` as `resolve_policy` takes it (resolve it once
    for many mini-batches). `timings`, if given, receives seconds per pass."""
    check_options(policy, granularity, memory)
    policy = resolve_policy(policy, spec, granularity)
    clock = time.perf_counter
    t0 = clock()
    cell_graph = build_graph(spec, instances)
    graph = lower_to_ops(cell_graph) if granularity == OP else cell_graph
    t1 = clock()
    sched, fallbacks = policy.schedule(graph)
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
    return CompiledBatch(cell_graph, graph, sched, layout, fallbacks)


def compile_plan(spec: ModelSpec, spec_text: str, dataset: Dataset, batch_size: int,
                 policy: str | BatchingPolicy | None = None, granularity: str = CELL,
                 memory: str = DEFAULT_MEMORY, seed: int = 0, verify: bool = True) -> Plan:
    check_options(policy, granularity, memory)
    policy = resolve_policy(policy, spec, granularity)
    batches = tuple(compile_batch(spec, mb, policy, granularity, memory, verify)
                    for mb in minibatches(dataset.instances, batch_size))
    return Plan(spec, spec_text, batches, policy.name, granularity, memory, batch_size, seed,
                dataset.source, dataset.digest, policy.digest)


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
    fsm_fallbacks: int = 0  # FSM steps whose state the table lacked (typewise decided)
    policy_digest: str | None = None  # the policy file's checksum, for fsm
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
            "lower_bound": self.lower_bound, "fsm_fallbacks": self.fsm_fallbacks,
            "gathers": self.gathers, "gather_bytes": self.gather_bytes,
            "ms_per_minibatch": round(self.ms_per_minibatch, 4),
            "instances_per_s": round(self.num_instances / max(sum(self.per_minibatch_ms), 1e-9) * 1e3, 2),
            "phase_ms": {k: round(statistics.median(v), 4) for k, v in self.phase_ms.items()},
        }
        if self.policy_digest is not None:
            out["policy_digest"] = self.policy_digest
        if self.max_abs_error is not None:
            out["max_abs_error"] = self.max_abs_error
            out["check"] = "passed" if self.check_passed else "failed"
        return out

    def add(self, compiled: CompiledBatch, stats, phases: dict[str, float], error: float | None) -> None:
        self.num_instances += compiled.cell_graph.num_instances
        self.num_minibatches += 1
        self.num_batches += compiled.schedule.num_batches
        self.lower_bound += lower_bound(compiled.graph)
        self.fsm_fallbacks += compiled.fsm_fallbacks
        self.gathers += stats.gathers
        self.gather_bytes += stats.gather_bytes
        for k, v in phases.items():
            self.phase_ms.setdefault(k, []).append(v * 1e3)
        self.per_minibatch_ms.append(sum(phases.values()) * 1e3)
        if error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, error)


def _execute(runtime: Runtime, compiled: CompiledBatch, phases: dict[str, float], index: int):
    check_minibatch_fits(runtime.spec, compiled.graph, compiled.schedule, compiled.layout, runtime.device,
                         f"mini-batch {index}")
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


def run(spec: ModelSpec, dataset: Dataset, batch_size: int = 64, policy: str | BatchingPolicy | None = None,
        granularity: str = CELL, memory: str = DEFAULT_MEMORY, device: str = "cpu", check: bool = False,
        verify: bool = False) -> RunReport:
    """Compile and execute every mini-batch of `dataset`, end to end, timing each."""
    check_options(policy, granularity, memory)
    policy = resolve_policy(policy, spec, granularity)
    runtime = Runtime(spec, device)
    report = RunReport(spec.name, policy.name, granularity, memory, device, torch.get_num_threads(), batch_size,
                       policy_digest=policy.digest)
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
                       torch.get_num_threads(), plan.batch_size, policy_digest=plan.policy_digest)
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
