"""The benchmark suite: every bundled model on its data, edbc under each policy and memory mode,
and the external anchors on the same instances, in one run.

A workload is a model with its default data (real where `../shared/data` has
it, else synthetic with the same statistics). edbc is timed end to end from
parsed instances to outputs — graph build + schedule + memory plan +
execution — as DyNet's own figure includes its graph building. Every
configuration is warmed up once, then timed on at least `samples` mini-batches
(cycling over the data's full mini-batches); the median is reported.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from math import prod

import numpy as np
import torch

from ..api import POLICY_NAMES, CompileOptions, Compiler, load_data, load_spec, minibatches
from ..artifact import write_atomic
from ..errors import UsageError
from ..memory import PLANNERS
from ..runtime import Runtime
from ..schedule import lower_bound
from ..data.tree import merge_same_label
from ..settings import MODELS_DIR, NO_SPLITS, SHARED_DATA, SHARED_SPLITS
from ..spec.program import affine_terms
from .baselines import BASELINES, make_baseline


@dataclass(frozen=True)
class Workload:
    model: str
    kind: str  # the model's structure kind, which picks its data in SHARED_SPLITS
    batch_size: int  # the batch size of the headline comparison
    nary: bool = False  # SST's binarised trees merged into n-ary ones (`merge_same_label`)

    @property
    def data(self) -> str | None:
        """The test split under ../shared/data, None for synthetic."""
        return SHARED_SPLITS.get(self.kind, NO_SPLITS)[2]


# Held-out splits, as in the evaluation of method.md §5 (the tagger at B=32, as DyNet's figure).
WORKLOADS = (
    Workload("treelstm", "tree", 64),
    Workload("treegru", "tree", 64),
    Workload("mvrnn", "tree", 64),
    Workload("childsum_treelstm", "tree", 64, nary=True),
    Workload("bilstm_tagger", "chain", 32),
    Workload("lstm_seq2seq", "seq2seq", 64),
    Workload("lattice_lstm", "lattice", 64),
    Workload("lattice_gru", "lattice", 64),
)
DYNET_MODELS = ("treelstm", "lattice_lstm", "bilstm_tagger")
DEFAULT_BATCH_SIZES = "1,32,64,128"
SYNTHETIC_INSTANCES = 512


@dataclass
class Row:
    """One system on one workload at one batch size."""

    model: str
    data: str
    batch_size: int
    system: str  # "edbc", or an anchor's name
    policy: str = ""
    memory: str = ""
    ms: float = 0.0  # median ms per mini-batch, end to end
    samples: int = 0
    batches: float | None = None  # per mini-batch, mean
    lower_bound: float | None = None
    gathers: float | None = None  # runtime gathers per mini-batch, mean
    gather_bytes: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # median ms of each compile phase
    floor: float | None = None  # ms of one matmul with the mini-batch's matmul FLOPs (mean)

    @property
    def instances_per_s(self) -> float:
        return self.batch_size / self.ms * 1e3 if self.ms else 0.0


def full_minibatches(instances: list, size: int) -> list[list]:
    """Only full mini-batches, so that every sample times the same amount of work."""
    return [mb for mb in minibatches(instances, size) if len(mb) == size]


def load_workload(w: Workload, batch_size: int, max_minibatches: int | None = None):
    """The model, where its data came from, and full mini-batches of `batch_size`."""
    spec, _ = load_spec(MODELS_DIR / f"{w.model}.yaml")
    path = SHARED_DATA / w.data if w.data else None
    real = path is not None and path.exists()
    data = load_data(spec, str(path) if real else None, limit=None if real else SYNTHETIC_INSTANCES)
    instances, source = data.instances, data.source
    if w.nary and real:  # synthetic trees for such a model are n-ary already
        instances, source = [merge_same_label(t) for t in instances], f"{source} (merged n-ary)"
    return spec, source, full_minibatches(instances, batch_size)[:max_minibatches]


def _samples(batches: list, count: int) -> list:
    return [batches[i % len(batches)] for i in range(max(count, len(batches)))]


def time_edbc(spec, source: str, batches: list, policy: str, memory: str, runtime: Runtime,
              granularity: str = "cell", samples: int = 20) -> Row:
    # Each mini-batch is compiled and run once, as `edbc run` does (pq plans only where that repays).
    compiler = Compiler(spec, CompileOptions(policy, granularity, memory), runs=1)

    def once(mb) -> tuple[dict[str, float], object]:
        phases: dict[str, float] = {}
        c = compiler.compile_batch(mb, phases)
        t0 = time.perf_counter()
        runtime.prepare(c).run()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        phases["execute"] = time.perf_counter() - t0
        return phases, (c, c.memory_stats())

    for mb in batches:
        once(mb)
    timed = [once(mb) for mb in _samples(batches, samples)]
    compiled = timed[: len(batches)]
    return Row(
        model=spec.name, data=_label(source), batch_size=len(batches[0]), system="edbc", policy=policy,
        memory=memory, samples=len(timed),
        ms=statistics.median(sum(p.values()) * 1e3 for p, _ in timed),
        batches=statistics.mean(c.schedule.num_batches for _, (c, _) in compiled),
        lower_bound=statistics.mean(lower_bound(c.graph) for _, (c, _) in compiled),
        gathers=statistics.mean(s.gathers for _, (_, s) in compiled),
        gather_bytes=statistics.mean(s.gather_bytes for _, (_, s) in compiled),
        phases={k: statistics.median(p[k] * 1e3 for p, _ in timed) for k in timed[0][0]},
        floor=matmul_floor_ms(statistics.mean(matmul_flops(c, runtime) for _, (c, _) in compiled), runtime.device),
    )


COMPILE_PHASES = ("graph", "schedule", "memory")  # the per-mini-batch compile the overhead goal counts


def execution(phases: dict[str, float]) -> float:
    """A mini-batch's execution: its operands prepared (the operand table), then run."""
    return phases.get("prepare", 0) + phases.get("execute", 0)


def matmul_flops(compiled, runtime: Runtime) -> float:
    """FLOPs of a compiled mini-batch's matmuls: every affine term of every cell call, 2·in·out a row
    (what is left after the cell compiler folded embeddings into tables; matvec/matmul ops not counted)."""
    bound = runtime.bound()
    per_row = np.zeros(len(compiled.graph.types))
    for t, cell in enumerate(compiled.cells):
        for op in cell.program.ops if cell is not None else ():
            if op.kind == "affine":
                pairs, _ = affine_terms(op.args)
                per_row[t] += sum(2 * prod(cell.program.values[x].shape) * bound[w].shape[-1] for x, w in pairs)
    return float((per_row[compiled.schedule.batch_type] * compiled.schedule.sizes).sum())


def matmul_floor_ms(flops: float, device: torch.device) -> float:
    """Execution's floor: ms of one [M, 256] x [256, 512] matmul of `flops` FLOPs (median of 7)."""
    rows = max(1, round(flops / (2 * 256 * 512)))
    a, b = torch.randn(rows, 256, device=device), torch.randn(256, 512, device=device)
    out = torch.empty(rows, 512, device=device)
    times = []
    for _ in range(8):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e3


def time_baseline(spec, source: str, batches: list, baseline, samples: int = 20) -> Row:
    """Time `baseline` (`baselines.make_baseline`) on the same mini-batches as edbc."""
    name, _ = BASELINES[spec.name]
    for mb in batches:
        baseline(mb)
    times = []
    for mb in _samples(batches, samples):
        t0 = time.perf_counter()
        baseline(mb)
        times.append((time.perf_counter() - t0) * 1e3)
    return Row(model=spec.name, data=_label(source), batch_size=len(batches[0]), system=name,
               ms=statistics.median(times), samples=len(times))


def dynet_available() -> bool:
    try:
        import dynet_config  # noqa: F401  (the wheel ships both modules)
    except ImportError:
        return False
    return True


def time_dynet(spec, w: Workload, batch_size: int, runtime: Runtime, autobatch: int, minibatches_: int,
               samples: int, threads: int) -> Row:
    """DyNet in a process of its own (its autobatch setting is fixed at import)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.npz"
        np.savez(weights, **{k: v.cpu().numpy() for k, v in runtime.weights.items()})
        path = SHARED_DATA / w.data if w.data else None
        args = [sys.executable, "-m", "edbc.bench.dynet_anchor", "--model", w.model, "--autobatch",
                str(autobatch), "--batch-size", str(batch_size), "--minibatches", str(minibatches_),
                "--passes", str(max(1, -(-samples // minibatches_))), "--weights", str(weights)]
        if path is not None and path.exists():
            args += ["--data", str(path)]
        else:
            args += ["--limit", str(SYNTHETIC_INSTANCES)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run(args, capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"DyNet anchor failed: {out.stderr.strip().splitlines()[-1:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    name = "DyNet agenda" if autobatch == 1 else ("DyNet depth" if autobatch == 2 else "DyNet no batching")
    return Row(model=w.model, data=Path(w.data).name if w.data else "synthetic", batch_size=batch_size,
               system=name, ms=result["ms"], samples=result["samples"])


def run_suite(models: list[str], batch_sizes: list[int], policies: list[str], memories: list[str],
              samples: int = 20, max_minibatches: int = 8, threads: int = 1, dynet: bool = True,
              granularity: str = "cell", progress=None) -> list[Row]:
    """Every selected workload x batch size: edbc per policy and memory mode, then the anchors."""
    rows: list[Row] = []

    def add(row: Row | None) -> None:
        if row is not None:
            rows.append(row)
            if progress:
                progress(row)

    for w in WORKLOADS:
        if w.model not in models:
            continue
        for size in batch_sizes:
            spec, source, batches = load_workload(w, size, max_minibatches)
            if not batches:
                continue
            runtime = Runtime(spec)
            # Before edbc runs: a module baseline replaces the runtime's weights with its own.
            baseline = make_baseline(spec, runtime.weights, spec.seed) if spec.name in BASELINES else None
            for policy in policies:
                for memory in memories:
                    add(time_edbc(spec, source, batches, policy, memory, runtime, granularity, samples))
            if baseline is not None:
                add(time_baseline(spec, source, batches, baseline, samples))
            if dynet and w.model in DYNET_MODELS:
                for autobatch in (1, 0):
                    add(time_dynet(spec, w, size, runtime, autobatch, len(batches), samples, threads))
    return rows


def run_bench(models: list[str] | None = None, batch_sizes: str | None = None, policies: list[str] | None = None,
              memories: list[str] | None = None, samples: int = 20, max_minibatches: int = 8,
              granularity: str = "cell", threads: int = 1, dynet: bool = True, out_dir: str = "benchmarks",
              progress=None) -> str:
    """`edbc bench`: time the workloads (default: all) under each policy (default: all but
    optimal) and memory mode (default: all), with the anchors; write results.md, results.json and
    throughput.png to `out_dir` and return the markdown table."""
    import platform

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out {out_dir}: not a directory; expected a folder for results.md, results.json "
                         "and throughput.png")
    require_plotting()  # before the run, not after it
    known = {w.model for w in WORKLOADS}
    models = models or [w.model for w in WORKLOADS]
    for m in models:
        if m not in known:
            raise UsageError(f"--models: unknown model '{m}'; expected some of: {', '.join(sorted(known))}")
    policies = policies or [p for p in POLICY_NAMES if p != "optimal"]
    memories = memories or list(PLANNERS)
    for p in policies:
        for m in memories:
            CompileOptions(p, granularity, m)
    try:
        sizes = [int(b) for b in (batch_sizes or DEFAULT_BATCH_SIZES).split(",") if b]
    except ValueError:
        raise UsageError(f"--batch-sizes: expected comma-separated integers, got {batch_sizes!r}") from None
    use_dynet = dynet and dynet_available()
    rows = run_suite(models, sizes, policies, memories, samples, max_minibatches, threads, use_dynet,
                     granularity, progress or (lambda row: None))
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": threads, "samples": samples, "granularity": granularity,
            "dynet": "installed" if use_dynet else "not installed (pip install .[bench])"}
    write_results(rows, Path(out_dir), meta)
    return (Path(out_dir) / "results.md").read_text()


def _label(source: str) -> str:
    return source if source == "synthetic" else Path(source).name


def write_results(rows: list, out_dir: Path, meta: dict, names: tuple[str, str] = ("results", "throughput"),
                  report=None, draw=None) -> None:
    """JSON of every row (`<names[0]>.json`), a markdown report (`.md`, by `report`) and a throughput
    plot (`<names[1]>.png`, by `draw`), each written atomically. Defaults: the inference bench's."""
    report, draw = report or markdown, draw or plot
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot make the folder ({e.strerror})") from None
    payload = {"meta": meta, "rows": [dict(asdict(r), instances_per_s=r.instances_per_s) for r in rows]}
    write_atomic(out_dir / f"{names[0]}.json", (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())
    write_atomic(out_dir / f"{names[0]}.md", report(rows, meta).encode())
    draw(rows, out_dir / f"{names[1]}.png", meta)


def model_tables(rows: list, title, columns: list[str], cells) -> list[str]:
    """Markdown lines of one table per model, in the order models first appear: `title(model, its rows)`
    heads it, `columns` name its columns (B, system, policy, memory, then figures: the second to fourth
    left-aligned), `cells(row)` fills a line. Rows by batch size, edbc first, fastest first."""
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        lines += [f"## {title(model, mine)}", "", "| " + " | ".join(columns) + " |",
                  "|---:|---|---|---|" + "---:|" * (len(columns) - 4)]
        for r in sorted(mine, key=lambda r: (r.batch_size, r.system != "edbc", r.ms)):
            lines.append("| " + " | ".join(cells(r)) + " |")
        lines.append("")
    return lines


def optional_cell(value, fmt: str) -> str:
    """A table cell of a figure a row may lack."""
    return format(value, fmt) if value is not None else "-"


def markdown(rows: list[Row], meta: dict) -> str:
    lines = ["# edbc benchmark", "",
             f"{meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); forward only, hidden 128. "
             "ms per mini-batch end to end (graph build + schedule + memory plan + execution for edbc; "
             "graph construction + forward for DyNet), median over at least "
             f"{meta['samples']} timed mini-batches after a warm-up pass. The matmul floor is one "
             "[M, 256] x [256, 512] matmul with the mini-batch's matmul FLOPs (every affine of every cell "
             "call): the least any batching could spend on them.", ""]

    def cells(r: Row) -> list[str]:
        if r.system != "edbc":
            return [str(r.batch_size), r.system, "-", "-", f"{r.ms:.2f}", f"{r.instances_per_s:.0f}"] + ["-"] * 12
        p = r.phases
        return [str(r.batch_size), r.system, r.policy or "-", r.memory or "-", f"{r.ms:.2f}",
                f"{r.instances_per_s:.0f}", optional_cell(r.batches, ".1f"), optional_cell(r.lower_bound, ".1f"),
                optional_cell(r.gathers, ".0f"), optional_cell(r.gather_bytes and r.gather_bytes / 2**20, ".2f"),
                f"{p.get('graph', 0):.2f}", f"{p.get('schedule', 0):.2f}", f"{p.get('memory', 0):.2f}",
                f"{p.get('prepare', 0):.2f}", f"{p.get('execute', 0):.2f}", optional_cell(r.floor, ".2f"),
                optional_cell(r.floor and execution(p) / r.floor, ".2f"),
                optional_cell(execution(p) and 100 * sum(p.get(k, 0) for k in COMPILE_PHASES) / execution(p), ".0f")]

    lines += model_tables(rows, lambda model, mine: f"{model} ({mine[0].data})",
                          ["B", "system", "policy", "memory", "ms / mini-batch", "instances / s", "batches",
                           "lower bound", "gathers", "gather MiB", "build", "schedule", "plan", "prepare",
                           "execute", "matmul floor", "execution / floor", "compile % of execution"], cells)
    return "\n".join(lines)


def require_plotting() -> None:
    """The plot needs matplotlib, an optional dependency (`pip install .[bench]`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("edbc bench draws throughput.png with matplotlib, which is not installed; "
                         "install it with `pip install .[bench]`") from None


def plot(rows: list[Row], path: Path, meta: dict) -> None:
    """Throughput per model and system at each model's headline batch size (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = {w.model: w.batch_size for w in WORKLOADS}
    models = [m for m in dict.fromkeys(r.model for r in rows) if any(r.batch_size == headline.get(m) for r in rows)]
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.batch_size != headline.get(r.model):
            continue
        name = f"edbc {r.policy}" if r.system == "edbc" else r.system
        if r.system == "edbc" and r.policy == "eager":
            continue
        key = (r.model, name)
        best[key] = max(best.get(key, 0.0), r.instances_per_s)
    systems = list(dict.fromkeys(name for _, name in best))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(models)), 4.5))
    width = 0.8 / max(1, len(systems))
    for k, name in enumerate(systems):
        xs = [i + k * width for i, m in enumerate(models) if (m, name) in best]
        ys = [best[(m, name)] for m in models if (m, name) in best]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))])
    ax.set_xticklabels([f"{m}\nB={headline[m]}" for m in models], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("instances / s (log scale)")
    ax.set_title(f"Forward throughput, {meta['threads']} thread(s), end to end")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically, and closed."""
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, image.getvalue())
