"""The Python API: everything the CLI does, as functions; each command calls one of them.

The compiler's passes, both levels, are listed in `edbc.passes`. A `Compiler`
runs them for one model and `CompileOptions`: mini-batches in,
`CompiledBatch`es out (graph, schedule, layout and the compiled cells their
kernels run). `run` compiles and executes mini-batches and reports;
`run_plan` executes a saved plan; `compile_plan` / `compile_to_file` make
plans; `inspect` describes one; `schedule_files` schedules bare typed DAGs;
`train_policy` trains a batching policy.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .artifact import check_output, file_digest
from .cell import CompiledCell, compile_cell, format_compiled_cell
from .checkpoint import (Checkpoint, check_checkpoint, format_checkpoint, import_weights, is_checkpoint,
                         load_checkpoint, new_checkpoint, read_checkpoint, read_mapping, read_state_dict,
                         save_checkpoint)
from .data import (TYPES, Vocab, build_labels, build_vocabs, default_labels, encode, parse_instances,
                   read_instances, read_labels, read_vocab, spec_vocabs, synthesize)
from .data.typed_dag import read_typed_dag
from .distributed import SINGLE, World, join
from .errors import ArtifactError, EdbcError, SpecError, UsageError, VerificationError
from .graph import CELL, DAG, format_graph
from .inputs import read_input_bytes, read_input_text
from .memory import PLANNERS, format_layout
from .memory.operands import MemoryStats, NO_STATS, format_memory, memory_stats
from .outputs import check_output_path, readout_shape, split_by_instance, write_outputs
from .passes import BATCH_PASSES, GRANULARITIES, PASS_NAMES, BatchState, CompileOptions, run_passes
from .plan import CompiledBatch, Plan, format_plan, load_plan, save_plan
from .plan.plan import MAGIC
from .policy.resolve import POLICY_NAMES, BatchingPolicy, resolve_policy, shipped_policy_path
from .runtime import Runtime
from .runtime.module import WeightsModule
from .runtime.weights import init_weights
from .runtime.limits import check_minibatch_fits
from .schedule import format_schedule, lower_bound, verify_schedule
from .settings import (CHECK_TOLERANCE, DEFAULT_BATCH_SIZE, DEFAULT_MEMORY, DEFAULT_MODEL, DEFAULT_SYNTHETIC_INSTANCES,
                       DUMPS, PolicySettings)
from .spec import ModelSpec, parse_model
from .spec.ops import set_reduction_of
from .spec.program import Program

__all__ = ["Model", "load", "init_checkpoint", "import_checkpoint", "train_model", "eval_model", "CompileOptions", "Compiler", "BatchingPolicy", "resolve_policy", "shipped_policy_path", "POLICY_NAMES",
           "GRANULARITIES", "PASS_NAMES", "load_spec", "load_data", "training_data", "minibatches", "compile_batch",
           "compile_plan", "compile_to_file", "run", "run_plan", "run_target", "inspect", "memory_comparison",
           "schedule_files", "train_policy", "Dataset", "RunReport"]


@dataclass(frozen=True, eq=False)
class Dataset:
    instances: list  # encoded: token ids filled in
    source: str  # a path, or "synthetic"
    digest: str  # sha256 of the data file, or "synthetic:<seed>:<n>"


def load_spec(path: str | Path | None = None, dims: dict[str, int] | None = None) -> tuple[ModelSpec, str]:
    """A model spec and its text; the bundled TreeLSTM when `path` is None. `dims` are set over the
    spec's own dimensions."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    text = read_input_text(path, "model spec", SpecError)
    return parse_model(text, str(path), dims=dims), text


def load_model_files(model: str | Path | None, weights: str | Path | None = None,
                     dims: dict[str, int] | None = None) -> tuple[ModelSpec, str, Checkpoint | None]:
    """A spec, its text and the checkpoint `weights` (if given), the spec read with the dimensions the
    checkpoint was made with (`edbc train --set`) and any `dims` given, which must agree with them."""
    ckpt = read_checkpoint(str(weights)) if weights is not None else None
    merged = dict(ckpt.dims) if ckpt else {}
    for name, value in (dims or {}).items():
        if merged.get(name, value) != value:
            raise UsageError(f"--set dims.{name}={value}: the checkpoint was made with dims.{name}={merged[name]}",
                             path=str(weights))
        merged[name] = value
    spec, text = load_spec(model, merged)
    return spec, text, check_checkpoint(ckpt, spec, str(weights)) if ckpt else None


def load_data(spec: ModelSpec, data: str | None = None, limit: int | None = None, seed: int = 0,
              vocabs: dict[str, Vocab] | None = None) -> Dataset:
    """Read `data` with the reader of the spec's structure kind, or generate synthetic instances, and
    encode them with `vocabs` (a checkpoint's; default: the spec's hashed vocabularies)."""
    raw, source, digest = _raw_data(spec, data, limit, seed)
    return Dataset(encode(raw, spec_vocabs(spec) if vocabs is None else vocabs), source, digest)


def _raw_data(spec: ModelSpec, data: str | None, limit: int | None, seed: int) -> tuple[list, str, str]:
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if data is None:
        n = limit or DEFAULT_SYNTHETIC_INSTANCES
        raw = synthesize(spec, n, seed)
        source, digest = "synthetic", f"synthetic:{spec.kind}:{seed}:{n}"
    else:
        raw = read_instances(spec.kind, data, limit)
        source, digest = str(data), file_digest(data)
    return raw, source, digest


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


Dump = Callable[[str], None]


class Compiler:
    """The passes of both levels for one model and one set of options.

    Mini-batches go through `BATCH_PASSES`; the cell programs their kernels run go
    through the cell passes once each (a program that recurs across mini-batches is
    compiled once). `verify` runs each pass's verifier after it; `dump_after` names a
    pass whose IR is handed to `dump` (the first mini-batch's, and each cell's once).
    """

    def __init__(self, spec: ModelSpec, options: CompileOptions = CompileOptions(), verify: bool = False,
                 dump_after: str | None = None, dump: Dump | None = None, inference: bool = True,
                 runs: int | None = None):
        if dump_after is not None and dump_after not in PASS_NAMES:
            raise UsageError(f"--dump-after: unknown pass '{dump_after}'; expected one of: {', '.join(PASS_NAMES)}")
        self.spec = spec
        self.options = options
        self.policy = resolve_policy(options.policy, spec, options.granularity)
        self.verify = verify
        self.dump_after = dump_after
        self.dump = dump
        self.inference = inference  # False for training: see `compile_cell`
        # How often each compiled mini-batch will run, where known: `--memory pq` then plans only a
        # mini-batch whose gathers over those runs cost more than planning it (`planning_pays`).
        self.runs = runs
        self.param_shapes = {name: p.shape for name, p in spec.params.items()}
        self._cells: dict[Program, CompiledCell] = {}
        self._cells_by_id: dict[int, tuple[Program, CompiledCell]] = {}
        self._batches = 0

    def cell(self, program: Program) -> CompiledCell:
        """The compiled cell of `program` under this compiler's memory mode."""
        # By identity first: hashing a Program walks all of it, and a graph's types repeat.
        known = self._cells_by_id.get(id(program))
        if known is not None and known[0] is program:
            return known[1]
        cell = self._cells.get(program)
        if cell is None:
            cell = self._cells[program] = compile_cell(program, self.param_shapes, self.options.memory, True,
                                                       self.verify, self.dump_after, self.dump, self.inference)
        self._cells_by_id[id(program)] = (program, cell)
        return cell

    def compile_batch(self, instances: list, timings: dict[str, float] | None = None) -> CompiledBatch:
        """Run the passes on one mini-batch. `timings`, if given, receives seconds per phase
        (graph, schedule, memory, cells)."""
        first = self._batches == 0
        self._batches += 1
        state = run_passes(BATCH_PASSES, BatchState(self.spec, instances, self.options, self.policy, runs=self.runs),
                           self.verify, self.dump_after if first else None, self.dump, timings)
        t0 = time.perf_counter()
        used = set(np.unique(state.schedule.batch_type).tolist())
        cells = tuple(self.cell(t.program) if i in used and set_reduction_of(t.program) is None else None
                      for i, t in enumerate(state.graph.types))  # a set reduction has no cell: `SetKernel`
        if timings is not None:
            timings["cells"] = time.perf_counter() - t0
        return CompiledBatch(state.cell_graph, state.graph, state.schedule, state.layout, cells, state.fsm_fallbacks,
                             self.inference, state.operands)


def _options(options: "CompileOptions | str | None") -> CompileOptions:
    """Options as given: a `CompileOptions`, or just a policy (the rest default)."""
    return options if isinstance(options, CompileOptions) else CompileOptions(options)


def compile_batch(spec: ModelSpec, instances: list, options: "CompileOptions | str | None" = None,
                  verify: bool = False, timings: dict[str, float] | None = None) -> CompiledBatch:
    """One mini-batch compiled on its own (a `Compiler` reuses policy and cells across many)."""
    return Compiler(spec, _options(options), verify).compile_batch(instances, timings)


def compile_plan(spec: ModelSpec, spec_text: str, dataset: Dataset, batch_size: int,
                 options: "CompileOptions | str | None" = None, seed: int = 0, verify: bool = True,
                 dump_after: str | None = None, dump: Dump | None = None, weights_digest: str | None = None,
                 dims: dict[str, int] | None = None) -> Plan:
    """A plan of `dataset`'s mini-batches. `weights_digest` names the checkpoint whose vocabularies
    encoded the dataset: running the plan then needs that checkpoint."""
    compiler = Compiler(spec, _options(options), verify, dump_after, dump)
    batches = tuple(compiler.compile_batch(mb) for mb in minibatches(dataset.instances, batch_size))
    resolved = CompileOptions(compiler.policy.name, compiler.options.granularity, compiler.options.memory)
    return Plan(spec=spec, spec_text=spec_text, batches=batches, options=resolved, batch_size=batch_size, seed=seed,
                data=dataset.source, data_digest=dataset.digest, policy_digest=compiler.policy.digest,
                weights_digest=weights_digest, dims=dict(dims or {}))


def compile_to_file(model: str, output: str, data: str | None = None, limit: int | None = None,
                    batch_size: int | None = None, options: CompileOptions = CompileOptions(), seed: int = 0,
                    dump_after: str | None = None, dump: Dump | None = None, weights: str | None = None) -> Plan:
    """`edbc compile`: compile mini-batches of the model at `model` (its tokens encoded with the
    vocabularies of the checkpoint `weights`, if given) and write the plan to `output`, which may be
    none of the files it reads (spec, data, policy, checkpoint)."""
    spec, text, ckpt = load_model_files(model, weights)
    inputs = (model, data, resolve_policy(options.policy, spec, options.granularity).path, weights)
    check_output(output, inputs)  # before the work, not after it
    dataset = load_data(spec, data, limit, seed, ckpt.vocabs if ckpt else None)
    plan = compile_plan(spec, text, dataset, DEFAULT_BATCH_SIZE if batch_size is None else batch_size, options,
                        seed, True, dump_after, dump, ckpt.digest if ckpt else None, ckpt.dims if ckpt else None)
    save_plan(plan, output, inputs)
    return plan


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
    fsm_fallbacks: int = 0  # FSM steps whose state the table lacked (`Fsm.fallback` decided)
    policy_digest: str | None = None  # the policy file's checksum, for fsm
    gathers: int = 0
    gather_bytes: int = 0
    planned: int = 0  # mini-batches laid out by the pq planner (with pq: those where planning repays)
    max_abs_error: float | None = None  # with check: over the values finite in both results
    num_output_values: int = 0
    nonfinite_outputs: int = 0  # output values that are NaN or infinite
    nonfinite_reference: int = 0  # with check: reference values that are NaN or infinite
    per_minibatch_ms: list[float] = field(default_factory=list)
    phase_ms: dict[str, list[float]] = field(default_factory=dict)
    weights_digest: str | None = None  # the checkpoint whose weights ran (None: the spec's seeded ones)
    process_ms: list[float] = field(default_factory=list)  # merged from several processes: each one's time
    # With `keep_outputs`: each instance's readout rows, in input order (on the CPU).
    outputs: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def ms_per_minibatch(self) -> float:
        return statistics.median(self.per_minibatch_ms) if self.per_minibatch_ms else 0.0

    @property
    def busy_ms(self) -> float:
        """What the instances took: the slowest process's time, as the processes ran side by side."""
        return max(self.process_ms) if self.process_ms else sum(self.per_minibatch_ms)

    @property
    def check_passed(self) -> bool | None:
        """None without a check; a non-finite value on either side fails it, whatever the error."""
        if self.max_abs_error is None:
            return None
        return self.nonfinite_outputs == 0 and self.nonfinite_reference == 0 and self.max_abs_error <= CHECK_TOLERANCE

    def to_json(self) -> dict:
        out = {
            "model": self.model, "policy": self.policy, "granularity": self.granularity,
            "memory": self.memory, "device": self.device, "threads": self.threads,
            "batch_size": self.batch_size, "num_instances": self.num_instances,
            "num_minibatches": self.num_minibatches, "num_batches": self.num_batches,
            "lower_bound": self.lower_bound, "fsm_fallbacks": self.fsm_fallbacks,
            "gathers": self.gathers, "gather_bytes": self.gather_bytes, "planned_minibatches": self.planned,
            "ms_per_minibatch": round(self.ms_per_minibatch, 4),
            "instances_per_s": round(self.num_instances / max(self.busy_ms, 1e-9) * 1e3, 2),
            "processes": max(len(self.process_ms), 1),
            "phase_ms": {k: round(statistics.median(v), 4) for k, v in self.phase_ms.items()},
            "nonfinite_outputs": self.nonfinite_outputs,
        }
        if self.policy_digest is not None:
            out["policy_digest"] = self.policy_digest
        if self.weights_digest is not None:
            out["weights_digest"] = self.weights_digest
        if self.max_abs_error is not None:
            out["max_abs_error"] = self.max_abs_error
            out["nonfinite_reference"] = self.nonfinite_reference
            out["check"] = "passed" if self.check_passed else "failed"
        return out

    def add(self, compiled: CompiledBatch, phases: dict[str, float], out: torch.Tensor,
            reference: torch.Tensor | None, keep_outputs: bool = False) -> None:
        if keep_outputs:
            self.outputs.extend(split_by_instance(compiled.cell_graph, out))
        stats = compiled.memory_stats()
        self.num_instances += compiled.cell_graph.num_instances
        self.num_minibatches += 1
        self.num_batches += compiled.schedule.num_batches
        self.lower_bound += lower_bound(compiled.graph)
        self.fsm_fallbacks += compiled.fsm_fallbacks
        self.gathers += stats.gathers
        self.gather_bytes += stats.gather_bytes
        self.planned += compiled.layout.mode == "pq"
        for k, v in phases.items():
            self.phase_ms.setdefault(k, []).append(v * 1e3)
        self.per_minibatch_ms.append(sum(phases.values()) * 1e3)
        finite = torch.isfinite(out)
        self.num_output_values += out.numel()
        self.nonfinite_outputs += int(out.numel() - finite.sum())
        if reference is not None:
            finite &= torch.isfinite(reference)
            self.nonfinite_reference += int(reference.numel() - torch.isfinite(reference).sum())
            # max() would drop a NaN (max(0.0, nan) is 0.0): non-finite values are counted above instead.
            error = float(torch.where(finite, (out - reference).abs(), 0.0).max()) if out.numel() else 0.0
            self.max_abs_error = max(self.max_abs_error or 0.0, error)

    def state(self) -> dict:
        """Everything but the outputs, as JSON: what a rank sends rank 0 (`RunReport(**state)`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outputs"}

    def merge(self, other: "RunReport") -> None:
        """Add the report of the next process's mini-batches (a sharded run: `edbc run --nproc`)."""
        self.process_ms = (self.process_ms or [sum(self.per_minibatch_ms)]) + [sum(other.per_minibatch_ms)]
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.max_abs_error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, other.max_abs_error)
        self.per_minibatch_ms += other.per_minibatch_ms
        for k, v in other.phase_ms.items():
            self.phase_ms.setdefault(k, []).extend(v)
        self.outputs += other.outputs


# The counts of `RunReport` that add up over mini-batches, and so over processes.
_SUMMED = ("num_instances", "num_minibatches", "num_batches", "lower_bound", "fsm_fallbacks", "gathers",
           "gather_bytes", "planned", "num_output_values", "nonfinite_outputs", "nonfinite_reference")


def _gathered(world: World, report: RunReport, spec: ModelSpec) -> RunReport:
    """On rank 0, every rank's report merged, its outputs in input order (the ranks ran contiguous
    shards of the mini-batches, in rank order); on the others, their own."""
    if world.size == 1:
        return report
    states = world.gather_json(report.state(), everyone=False)
    rows = world.gather_rows(report.outputs, readout_shape(spec), everyone=False)
    if not world.leader:
        return report
    merged = RunReport(**states[0], outputs=rows[0])
    for state, more in zip(states[1:], rows[1:]):
        merged.merge(RunReport(**state, outputs=more))
    return merged


def _execute(runtime: Runtime, compiled: CompiledBatch, phases: dict[str, float], index: int):
    check_minibatch_fits(runtime.spec, compiled.graph, compiled.schedule, compiled.layout, runtime.device,
                         f"mini-batch {index}")
    t0 = time.perf_counter()
    out = runtime.prepare(compiled).run()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    phases["execute"] = time.perf_counter() - t0
    return out


def _reference(runtime: Runtime, compiled: CompiledBatch, out: torch.Tensor) -> torch.Tensor:
    ref = runtime.reference(compiled.cell_graph)
    if ref.shape != out.shape:
        raise VerificationError(f"batched results have shape {list(out.shape)}, the reference {list(ref.shape)}")
    return ref


def run(spec: ModelSpec, dataset: Dataset, batch_size: int = DEFAULT_BATCH_SIZE,
        options: "CompileOptions | str | None" = None, device: str = "cpu", check: bool = False,
        verify: bool = False, checkpoint: Checkpoint | None = None, keep_outputs: bool = False) -> RunReport:
    """Compile and execute every mini-batch of `dataset`, end to end, timing each; with the
    checkpoint's weights if given (`dataset` encoded with its vocabularies), else the spec's seeded
    ones. `keep_outputs` keeps every instance's results in `RunReport.outputs`."""
    model = Model(spec, checkpoint=checkpoint, device=device, options=_options(options))
    return model.run(dataset, batch_size, check, verify, keep_outputs)


def run_plan(plan: Plan, device: str = "cpu", check: bool = False, checkpoint: Checkpoint | None = None,
             keep_outputs: bool = False, path: str | None = None, world: World = SINGLE) -> RunReport:
    """Execute a compiled plan (in a job of several processes, this rank's shard of its mini-batches);
    timings cover execution only (compilation happened before). A plan compiled with a checkpoint
    runs with that checkpoint only (its tokens are that checkpoint's ids)."""
    check_plan_weights(plan, checkpoint, path)
    runtime = Runtime(plan.spec, device, checkpoint.weights if checkpoint else None)
    report = RunReport(plan.spec.name, plan.options.policy, plan.options.granularity, plan.options.memory, device,
                       torch.get_num_threads(), plan.batch_size, policy_digest=plan.policy_digest,
                       weights_digest=plan.weights_digest)
    for index in world.shard(len(plan.batches)):
        compiled = plan.batches[index]
        phases: dict[str, float] = {}
        out = _execute(runtime, compiled, phases, index)
        report.add(compiled, phases, out, _reference(runtime, compiled, out) if check else None, keep_outputs)
    return report


def check_plan_weights(plan: Plan, checkpoint: Checkpoint | None, path: str | None = None) -> None:
    """A plan runs with the checkpoint it was compiled with, or, compiled without one, with none."""
    if plan.weights_digest is None and checkpoint is not None:
        raise UsageError("--weights: this plan was compiled without a checkpoint (its tokens are hashed ids); "
                         "compile it with `edbc compile --weights` to run it with one", path=path)
    if plan.weights_digest is not None and checkpoint is None:
        raise UsageError(f"this plan was compiled with checkpoint {plan.weights_digest[:12]}; give it with "
                         "--weights", path=path)
    if plan.weights_digest is not None and checkpoint.digest != plan.weights_digest:
        raise ArtifactError(f"this plan was compiled with checkpoint {plan.weights_digest[:12]}, not the one "
                            f"given ({checkpoint.digest[:12]}); recompile it with this checkpoint", path=path)


def is_plan(path: str) -> bool:
    """A plan by its first bytes, or by its name when it is too broken to tell."""
    if path.endswith(".plan"):
        return True
    try:
        return read_input_bytes(path, "")[:len(MAGIC)] == MAGIC
    except EdbcError:
        return False


def run_target(target: str | None = None, data: str | None = None, limit: int | None = None,
               batch_size: int | None = None, policy: str | None = None, granularity: str | None = None,
               memory: str | None = None, seed: int = 0, device: str = "cpu", check: bool = False,
               verify: bool = False, weights: str | None = None, output: str | None = None,
               predict: bool = False) -> tuple[RunReport, str]:
    """`edbc run`: a compiled plan, or mini-batches of a model (default: the bundled TreeLSTM on
    synthetic data), with the checkpoint `weights` if given. `output` receives every instance's
    results in input order (with `predict`, their label names too). Returns the report and where
    the instances came from. Options left None take their defaults; a plan fixed them when it was
    compiled.

    As a rank of a job of several processes (`edbc run --nproc N`, torchrun), it runs its shard of the
    mini-batches; rank 0 returns the report of all and writes `output`, the others their own report."""
    if predict and output is None:
        raise UsageError("--predict writes label names into the --output file; give --output")
    if output is not None:
        check_output_path(output, (target, data, weights))  # before the work, not after it
    with join(device) as world:
        if target is not None and is_plan(target):
            given = {"--data": data, "--limit": limit, "--batch-size": batch_size, "--policy": policy,
                     "--granularity": granularity, "--memory": memory}
            fixed = [k for k, v in given.items() if v is not None]
            if fixed:
                raise UsageError(f"{', '.join(fixed)}: fixed when the plan was compiled; "
                                 "give them to `edbc compile` instead")
            plan = load_plan(target)
            ckpt = load_checkpoint(weights, plan.spec) if weights is not None else None
            _check_predict(plan.spec, predict)
            world.agree("plan or weights", f"{file_digest(target)} {ckpt.digest if ckpt else None}")
            report = run_plan(plan, device, check, ckpt, output is not None, target, world)
            spec, source = plan.spec, f"plan {target}"
        else:
            model = load(target, weights, device, policy, granularity or CELL, memory or DEFAULT_MEMORY)
            _check_predict(model.spec, predict)
            dataset = model.data(data, limit, seed)
            weights_digest = model.checkpoint.digest if model.checkpoint else None
            world.agree("model, weights or data", f"{model.spec.digest} {weights_digest} {dataset.digest}")
            report = model.run(dataset, DEFAULT_BATCH_SIZE if batch_size is None else batch_size, check, verify,
                               output is not None, world)
            spec, ckpt, source = model.spec, model.checkpoint, dataset.source
        report = _gathered(world, report, spec)
        if output is not None and world.leader:
            labels = ckpt.labels if ckpt else default_labels(spec.classes)
            write_outputs(output, spec, report.outputs, labels, predict, (target, data, weights))
        return report, source


def _check_predict(spec: ModelSpec, predict: bool) -> None:
    shape = readout_shape(spec)
    if predict and len(shape) != 1:
        raise UsageError(f"--predict: the readout's output is {list(shape)}; expected a vector of class scores")


def memory_comparison(plan: Plan) -> dict[str, MemoryStats]:
    """Gathers and bytes of every mini-batch of `plan`, summed, under each memory mode.

    The plan's own mode uses its layout and cells; the others are planned and compiled
    now on the same schedules (`none` lays the arenas out in run order, `pq` plans them).
    """
    totals = {mode: NO_STATS for mode in PLANNERS}
    others = {mode: Compiler(plan.spec, CompileOptions("eager", plan.options.granularity, mode))
              for mode in PLANNERS if mode != plan.options.memory}
    for b in plan.batches:
        totals[plan.options.memory] = totals[plan.options.memory] + b.memory_stats()
        for mode, compiler in others.items():
            sched, layout = PLANNERS[mode](b.graph, b.schedule)
            cells = {t.program: compiler.cell(t.program).plan for t in b.graph.types}
            totals[mode] = totals[mode] + memory_stats(b.graph, sched, layout, cells)
    return totals


def inspect(plan_path: str, dump: str | None = None, minibatch: int = 0, weights: str | None = None) -> str:
    """`edbc inspect`: a plan's summary (sizes, batches against the lower bound, gathers under each
    memory mode), or one of its IRs in full: a mini-batch's graph, schedule or layout, or the
    compiled cells its kernels run. With `weights`, the checkpoint is checked against the plan and
    summarised too; a checkpoint on its own is summarised."""
    if not is_plan(plan_path) and is_checkpoint(plan_path):
        if dump is not None or weights is not None:
            raise UsageError("--dump and --weights inspect a plan; this is a checkpoint", path=plan_path)
        return format_checkpoint(read_checkpoint(plan_path), plan_path)
    plan = load_plan(plan_path)
    if weights is not None:
        ckpt = load_checkpoint(weights, plan.spec)
        check_plan_weights(plan, ckpt, plan_path)
        if dump is None:
            return "\n".join([format_plan(plan, plan_path), format_memory(memory_comparison(plan), plan.options.memory,
                                                                         len(plan.batches)),
                              format_checkpoint(ckpt, weights)])
    if dump is None:
        return format_plan(plan, plan_path) + "\n" + format_memory(memory_comparison(plan), plan.options.memory,
                                                                     len(plan.batches))
    if dump not in DUMPS:
        raise UsageError(f"--dump: unknown IR '{dump}'; expected one of: {', '.join(DUMPS)}")
    if dump == "cells":
        cells = {id(c): c for b in plan.batches for c in b.cells if c is not None}
        return "\n\n".join(format_compiled_cell(c) for c in cells.values())
    if not 0 <= minibatch < len(plan.batches):
        raise UsageError(f"--minibatch {minibatch}: the plan has {len(plan.batches)} mini-batches")
    b = plan.batches[minibatch]
    if dump == "graph":
        return format_graph(b.graph, max_nodes=None)
    if dump == "schedule":
        return format_schedule(b.graph, b.schedule, max_batches=None)
    return format_layout(b.layout)


def schedule_files(paths: list[str], policy: str = "agenda") -> dict:
    """`edbc schedule`: schedule bare typed DAG files; per file its nodes, batches, lower bound
    and FSM fallbacks."""
    resolved = resolve_policy(policy, None, DAG)
    results = []
    for path in paths:
        graph = read_typed_dag(path)
        sched, fallbacks = resolved.schedule(graph)
        verify_schedule(graph, sched)
        results.append({"file": path, "num_nodes": graph.num_nodes, "num_batches": sched.num_batches,
                        "lower_bound": lower_bound(graph), "fsm_fallbacks": fallbacks})
    return {"policy": resolved.name, "policy_digest": resolved.digest, "graphs": results}


def train_policy(inputs: list[str], output: str, dag_files: bool = False, data: str | None = None,
                 heldout: list[str] = (), limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 granularity: str = CELL, settings=None, checkpoint: str | None = None, resume: bool = False,
                 progress=None, subprocess_envs: bool = False, allow_worse: bool = False):
    """`edbc train-policy`: train the FSM batching policy of a model (default: the bundled TreeLSTM)
    or of bare typed DAG files, and write the policy file; `subprocess_envs` steps each environment in
    a subprocess. A policy worse than the best heuristic on the held-out graphs is refused
    (`WorsePolicyError`, nothing written) unless `allow_worse`. Returns the `PolicyFile`."""
    from .policy.train import default_checkpoint, train_dag_policy, train_model_policy

    settings = settings or PolicySettings()
    checkpoint = checkpoint or default_checkpoint(output)
    if dag_files:
        return train_dag_policy(list(inputs), list(heldout), settings, output, checkpoint, resume, progress,
                                subprocess_envs, allow_worse)
    if len(inputs) > 1:
        raise UsageError(f"give one model, got {len(inputs)} arguments; bare typed DAG files need --graphs")
    if len(heldout) > 1:
        raise UsageError("--heldout: give one held-out data file for a model")
    model = inputs[0] if inputs else str(DEFAULT_MODEL)
    spec, _ = load_spec(model)
    train, held = training_data(spec, data, heldout[0] if heldout else None, limit, settings.seed)
    return train_model_policy(spec, train, held, batch_size, granularity, settings, output, checkpoint, resume,
                              progress, (model, data, *heldout), subprocess_envs, allow_worse)  # the outputs never overwrite these


class Model:
    """A model ready for use: its spec, its weights on a device, the vocabularies that turn text into
    token ids and the names of its classes. Made by `load`; the CLI's `run` goes through it too.

        model = edbc.load("configs/models/treelstm.yaml", weights="model.safetensors")
        scores = model.predict(["(3 (2 a) (3 (2 good) (2 film)))"])   # one tensor per instance
    """

    def __init__(self, spec: ModelSpec, spec_text: str | None = None, checkpoint: Checkpoint | None = None,
                 device: str = "cpu", options: CompileOptions = CompileOptions(), training: bool = False):
        self.spec = spec
        self.spec_text = spec_text  # what plans embed; None: compile() is not available
        self.checkpoint = checkpoint
        self.options = options
        self.vocabs = checkpoint.vocabs if checkpoint else spec_vocabs(spec)
        self.labels = checkpoint.labels if checkpoint else default_labels(spec.classes)
        self.runtime = Runtime(spec, device, checkpoint.weights if checkpoint else None)
        # Training keeps dropout, and embeddings unfolded: a folded table costs a pass over the vocabulary a step.
        # A mini-batch compiled here runs once (training sets how often it will: `edbc.train.loop.train`).
        self.compiler = Compiler(spec, options, inference=not training, runs=1)
        self._module = None

    def module(self) -> torch.nn.Module:
        """The weights as `nn.Parameter`s of a `torch.nn.Module` (made once; the runtime then holds
        the same tensors), for `torch.optim`; `module(runtime.prepare(compiled))` is differentiable."""
        if self._module is None:
            self._module = WeightsModule(self.runtime)
        return self._module

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The parameters by name; change them in place (or entry by entry) and the next run sees it."""
        return self.runtime.weights

    def data(self, data: str | None = None, limit: int | None = None, seed: int = 0) -> Dataset:
        """A data file read with the model's structure reader (default: synthetic instances), encoded."""
        return load_data(self.spec, data, limit, seed, self.vocabs)

    def instances(self, items) -> list:
        """Encoded instances of `items`: a data file's path, or a list of instances given as text (a
        tree's brackets, a sentence's tokens, a lattice's lines) or as `edbc.data` objects."""
        if isinstance(items, (str, Path)):
            return self.data(str(items)).instances
        items = list(items)
        kind = TYPES[self.spec.kind]
        if all(isinstance(x, str) for x in items):
            raw = parse_instances(self.spec.kind, items)
        elif all(isinstance(x, kind) for x in items):
            raw = items
        else:
            raise UsageError(f"expected a data file's path, or a list of instances as text or as "
                             f"{kind.__name__} objects")
        return encode(raw, self.vocabs)

    def predict(self, items, batch_size: int = DEFAULT_BATCH_SIZE) -> list[torch.Tensor]:
        """Each instance's readout rows (`[1, classes]` for a root readout, one row per node or token
        otherwise), in the order given, on the CPU."""
        return self.run(Dataset(self.instances(items), "given", "given"), batch_size, keep_outputs=True).outputs

    def label_names(self, rows: torch.Tensor) -> list[str]:
        """The label of each row: its argmax's name."""
        return [self.labels[k] for k in rows.reshape(len(rows), -1).argmax(dim=1).tolist()]

    def compile(self, items, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> Plan:
        """A plan of `items` (as `instances` takes them), to save with `edbc.plan.save_plan` or run
        with `run_plan`."""
        if self.spec_text is None:
            raise UsageError("this model was made without its spec's text, which a plan embeds; use edbc.load")
        if isinstance(items, (str, Path)):
            dataset = self.data(str(items))
        else:
            dataset = Dataset(self.instances(items), "given", "given")
        return compile_plan(self.spec, self.spec_text, dataset, batch_size, self.options, seed,
                            weights_digest=self.checkpoint.digest if self.checkpoint else None,
                            dims=self.checkpoint.dims if self.checkpoint else None)

    def run(self, dataset: Dataset, batch_size: int = DEFAULT_BATCH_SIZE, check: bool = False,
            verify: bool = False, keep_outputs: bool = False, world: World = SINGLE) -> RunReport:
        """Compile and execute `dataset` (encoded with this model's vocabularies; in a job of several
        processes, this rank's shard of its mini-batches) and report."""
        compiler = self.compiler if not verify else Compiler(self.spec, self.options, verify, runs=self.compiler.runs)
        runtime = self.runtime
        report = RunReport(self.spec.name, compiler.policy.name, compiler.options.granularity,
                           compiler.options.memory, runtime.device.type, torch.get_num_threads(), batch_size,
                           policy_digest=compiler.policy.digest,
                           weights_digest=self.checkpoint.digest if self.checkpoint else None)
        groups = minibatches(dataset.instances, batch_size)
        for index in world.shard(len(groups)):
            phases: dict[str, float] = {}
            compiled = compiler.compile_batch(groups[index], phases)
            out = _execute(runtime, compiled, phases, index)
            report.add(compiled, phases, out, _reference(runtime, compiled, out) if check else None, keep_outputs)
        return report


def load(spec: str | Path | None = None, weights: str | Path | None = None, device: str = "cpu",
         policy: str | None = None, granularity: str = CELL, memory: str = DEFAULT_MEMORY,
         training: bool = False) -> Model:
    """The model of the spec at `spec` (default: the bundled TreeLSTM) with the checkpoint `weights`
    (default: the spec's seeded weights, hashed vocabularies), compiling with the given policy,
    granularity and memory mode; for training (dropout kept), or for inference."""
    model_spec, text, ckpt = load_model_files(spec, weights)
    return Model(model_spec, text, ckpt, device, CompileOptions(policy, granularity, memory), training)


def init_checkpoint(model: str | None, output: str, data: str | None = None, limit: int | None = None,
                    seed: int = 0) -> Checkpoint:
    """`edbc init`: a checkpoint of the model's initial weights (its initialisers and seeds), its
    vocabularies built from the training data `data` (default: synthetic instances), its label names
    from the data's labels; written atomically to `output`."""
    path = str(model) if model is not None else str(DEFAULT_MODEL)
    spec, _ = load_spec(path)
    inputs = (path, data)
    check_output(output, inputs)
    raw, source, digest = _raw_data(spec, data, limit, seed)
    vocabs, labels = _vocabs_and_labels(spec, raw, {}, None, data)
    ckpt = new_checkpoint(spec, init_weights(spec), vocabs, labels,
                          {"command": "init", "data": source, "data_digest": digest, "instances": len(raw)})
    return _saved(ckpt, output, inputs)


def import_checkpoint(model: str, state_dict: str, output: str, mapping: str | None = None,
                      data: str | None = None, vocab_files: dict[str, str] | None = None,
                      labels_file: str | None = None, limit: int | None = None) -> Checkpoint:
    """`edbc import-weights`: a checkpoint of the weights of a PyTorch state_dict (`torch.save` or
    safetensors), mapped onto the spec's parameters by `mapping` (default: by name). Its vocabularies
    are word lists (`vocab_files`: field -> file, line i = id i) or built from the training data
    `data` as `edbc init` builds them; its label names a list (`labels_file`) or from `data`."""
    spec, _ = load_spec(model)
    vocab_files = dict(vocab_files or {})
    for name in vocab_files:
        if name not in spec.vocabs:
            raise UsageError(f"--vocab {name}=...: model '{spec.name}' has no token field '{name}'; its fields "
                             f"are: {', '.join(spec.vocabs) or 'none'}")
    inputs = (model, state_dict, mapping, data, labels_file, *vocab_files.values())
    check_output(output, inputs)
    weights = import_weights(spec, read_state_dict(state_dict), read_mapping(mapping) if mapping else None,
                             source=state_dict)
    raw = read_instances(spec.kind, data, limit) if data is not None else None
    vocabs, labels = _vocabs_and_labels(spec, raw, vocab_files, labels_file, data)
    provenance = {"command": "import-weights", "state_dict": state_dict, "state_dict_digest": file_digest(state_dict),
                  "mapping": mapping or "by name"}
    if data is not None:
        provenance.update(data=data, data_digest=file_digest(data), instances=len(raw))
    return _saved(new_checkpoint(spec, weights, vocabs, labels, provenance), output, inputs)


def _vocabs_and_labels(spec: ModelSpec, raw: list | None, vocab_files: dict[str, str], labels_file: str | None,
                       data: str | None) -> tuple[dict[str, Vocab], tuple[str, ...]]:
    """A checkpoint's vocabularies: word lists where given, else built from the raw training instances
    (`build: hash` fields hash); and its label names: a list, the training labels, or the classes."""
    built = build_vocabs(spec, raw) if raw is not None else spec_vocabs(spec)
    vocabs = {}
    for name, v in spec.vocabs.items():
        if name in vocab_files:
            vocabs[name] = read_vocab(vocab_files[name], v)
        elif raw is None and v.build == "frequency":
            raise UsageError(f"vocabulary '{name}' is built from training data (build: frequency): give --data "
                             f"TRAIN to build it as `edbc init` does, or --vocab {name}=FILE (one word a line, "
                             "line i is id i)")
        else:
            vocabs[name] = built[name]
    if labels_file is not None:
        return vocabs, read_labels(labels_file, spec.classes)
    if raw is None:
        return vocabs, default_labels(spec.classes)
    labels = build_labels([k for inst in raw for k in inst.label_texts()], spec.classes)
    if isinstance(labels, str):
        raise UsageError(f"{labels}; the spec's readout needs as many classes as the data has labels", path=data)
    return vocabs, labels


def _saved(ckpt: Checkpoint, output: str, inputs) -> Checkpoint:
    return replace(ckpt, digest=save_checkpoint(ckpt, output, inputs))


def _training_instances(spec: ModelSpec, data: str | None, heldout: str | None, limit: int | None,
                        seed: int) -> tuple[list, list, str, str]:
    """Raw training and held-out instances and what they are (for the resume check). Without
    `heldout`, the last 10% of the training instances are held out."""
    raw, source, digest = _raw_data(spec, data, limit, seed)
    if heldout is not None:
        held, _, held_digest = _raw_data(spec, heldout, None, seed)
        return raw, held, digest, held_digest
    if len(raw) < 2:
        raise UsageError(f"{source}: holding out 10% needs at least 2 instances; give --heldout")
    cut = len(raw) - max(len(raw) // 10, 1)
    return raw[:cut], raw[cut:], digest, f"{digest} (last 10%)"


def train_model(model: str | None, data: str | None, output: str, heldout: str | None = None,
                weights: str | None = None, settings=None, dims: dict[str, int] | None = None,
                limit: int | None = None, resume: bool = False, policy: str | None = None,
                on_step=None, on_epoch=None, device: str = "cpu"):
    """`edbc train`: train the model at `model` (default: the bundled TreeLSTM) through compiled plans
    from the checkpoint `weights` (default: a fresh one, as `edbc init` makes it from `data`), keeping
    the best checkpoint by held-out accuracy at `output`. Returns every epoch's figures. As a rank of
    a job of several processes (`edbc train --nproc N`, torchrun), it trains data-parallel."""
    from .train import TrainSettings, train, with_readout_at

    settings = settings or TrainSettings()
    settings.check()
    with join(device) as world:  # first: a rank that fails to read its inputs then stops the others at once
        path = str(model) if model is not None else str(DEFAULT_MODEL)
        spec, text, ckpt = load_model_files(path, weights, dims)
        inputs = (path, data, heldout, weights)
        check_output(output, inputs)
        raw, held, digest, held_digest = _training_instances(spec, data, heldout, limit, settings.seed)
        dims = dict(ckpt.dims) if ckpt else dict(dims or {})
        if ckpt is None:
            vocabs, labels = _vocabs_and_labels(spec, raw, {}, None, data)
            ckpt = new_checkpoint(spec, init_weights(spec), vocabs, labels, {"command": "init"}, dims)
        if settings.loss_at is not None:
            spec = with_readout_at(spec, settings.loss_at)
        trained = Model(spec, text, ckpt, device, CompileOptions(policy), training=True)
        run = {"model": spec.digest, "data": digest, "heldout": held_digest, "weights": ckpt.digest, "dims": dims,
               "settings": {k: v for k, v in asdict(settings).items() if k != "epochs"}}

        def save(target: str, m: Model, extra: dict) -> None:
            provenance = {"command": "train", "data": data or "synthetic", "data_digest": digest, **extra}
            save_checkpoint(new_checkpoint(m.spec, m.weights, m.vocabs, m.labels, provenance, dims), target, inputs)

        return train(trained, trained.instances(raw), trained.instances(held), settings, output, run, resume, save,
                     on_step, on_epoch, world)


def eval_model(model: str | None, weights: str, data: str | None = None, limit: int | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, device: str = "cpu") -> dict[str, float]:
    """`edbc eval`: the loss and accuracies of a checkpoint on labelled data (a tree model is scored
    at every node, so that root and all-node accuracy both come out)."""
    from .train import Batches, score, with_readout_at

    spec, text, ckpt = load_model_files(str(model) if model is not None else str(DEFAULT_MODEL), weights)
    if spec.kind == "tree":
        spec = with_readout_at(spec, "nodes")
    m = Model(spec, text, ckpt, device)
    return score(m, Batches(m, m.data(data, limit, seed).instances, batch_size, None))
