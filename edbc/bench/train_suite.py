"""The training benchmark (`edbc bench --train`): training throughput of edbc, DyNet's autobatching and
plain PyTorch on the same model, data, mini-batches and optimizer.

A step is forward + backward + update: SGD (learning rate `LR`, no clipping) on the mean negative
log-likelihood of every labelled readout row, with a loss at every node (a tree's readout moved to
its nodes, `edbc.train.with_readout_at`; the tagger tags every token anyway). Every system starts
from the same weights, those of the `torch_models` module, imported into edbc through its mapping
and handed to DyNet in an edbc checkpoint with the vocabularies and label names built from the
mini-batches' instances; each system's first loss (mini-batch 0, before any update) is reported,
and they agree.

- edbc: a `Model` made for training (embeddings unfolded), as `edbc train` makes it; `Batches`
  compiles each mini-batch once, in the first epoch, and later epochs reuse the prepared plans
  (`Executable.forward`, `loss.backward()`, `optimizer.step()`). Policy: the resolved default (`fsm`
  where the shipped policy was trained for the spec as trained, else `typewise`).
- DyNet (agenda autobatching), in a process of its own (`dynet_anchor --train --serve`).
- PyTorch: the `torch_models` module (`TreeLSTM.nodes`, node by node; `BiLSTMTagger`, a packed
  bidirectional `nn.LSTM`).

An epoch is the workload's mini-batches (the first `max_minibatches` full ones of its data). The first
epoch of every system is a warm-up (edbc's compilation happens there) and is not timed; then rounds
follow, each one epoch of every system in turn, the order rotating, so that load from elsewhere on
the machine falls on all of them alike. A figure is the median over every timed step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..api import CompileOptions, Model, load_spec
from ..checkpoint import import_weights, new_checkpoint, read_mapping, save_checkpoint
from ..data import build_labels, build_vocabs, encode, read_instances, synthesize
from ..errors import UsageError
from ..memory import PLANNERS
from ..settings import MAPPINGS_DIR, MODELS_DIR, SHARED_DATA, SHARED_SPLITS
from ..train import readout_targets, with_readout_at
from ..train.loop import Batches, loss_of
from .suite import (dynet_available, full_minibatches, model_tables, optional_cell, require_plotting, save_figure,
                    write_results)
from .torch_models import build_module

LR = 0.05
READOUT_AT = "nodes"  # a loss at every node (tree), every token (chain)
PHASES = ("forward", "backward", "update")  # of a step; the loss is part of forward


@dataclass(frozen=True)
class TrainWorkload:
    model: str
    kind: str
    split: int  # index into SHARED_SPLITS[kind]
    batch_sizes: tuple[int, ...]
    goal: float  # edbc / DyNet, the goal of issue 13

    @property
    def data(self) -> str | None:
        return SHARED_SPLITS[self.kind][self.split]


# SST's training split; WikiNER has only its dev file (the chain's "test" split in SHARED_SPLITS).
TRAIN_WORKLOADS = (
    TrainWorkload("treelstm", "tree", 0, (25, 64), 2.0),
    TrainWorkload("bilstm_tagger", "chain", 2, (32,), 1.5),
)
SYNTHETIC_INSTANCES = 512


@dataclass
class TrainRow:
    """One system training one workload at one batch size."""

    model: str
    data: str
    batch_size: int
    system: str  # "edbc", "DyNet agenda" or "PyTorch ..."
    policy: str = ""
    memory: str = ""
    ms: float = 0.0  # median ms per step (forward + backward + update)
    samples: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # median ms of each of PHASES
    first_loss: float = 0.0  # mini-batch 0's loss before any update
    compile_ms: float | None = None  # edbc: compiling and preparing a mini-batch, mean (first epoch)
    batches: float | None = None  # edbc: batches per mini-batch, mean

    @property
    def instances_per_s(self) -> float:
        return self.batch_size / self.ms * 1e3 if self.ms else 0.0


def sgd(params) -> torch.optim.Optimizer:
    """The optimizer of edbc and PyTorch: SGD, one multi-tensor update (as `edbc train` makes it)."""
    return torch.optim.SGD(params, lr=LR, foreach=True)


# ----------------------------------------------------------------------------------------------
# The systems. Each warms up on construction (one epoch) and then times one epoch per `epoch()`,
# returning each step's seconds per phase.

Steps = list[tuple[float, float, float]]


class EdbcTrainer:
    def __init__(self, spec, ckpt, batches: list[list], policy: str | None, memory: str, granularity: str):
        # As `edbc train` makes it: embeddings unfolded, the runtime training copies of the weights.
        self.model = Model(spec, None, ckpt, options=CompileOptions(policy, granularity, memory), training=True)
        self.optimizer = sgd(self.model.module().parameters())
        self.batches = Batches(self.model, [x for mb in batches for x in mb], len(batches[0]), None)
        self.first_loss = self._epoch(first=True)
        self.compile_ms = self.batches.compile_s / len(self.batches) * 1e3
        self.num_batches = statistics.mean(self.batches.get(i)[0].schedule.num_batches
                                           for i in range(len(self.batches)))

    def _epoch(self, first: bool = False):
        steps = []
        loss0 = None
        for index in range(len(self.batches)):
            _, executable, targets, _ = self.batches.get(index)
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_of(executable.forward(), targets)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            self.optimizer.step()
            steps.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            if first and index == 0:
                loss0 = loss.item()
        return loss0 if first else steps

    def epoch(self) -> Steps:
        return self._epoch()


class TorchTrainer:
    def __init__(self, module: torch.nn.Module, batches: list[list], targets: list[torch.Tensor]):
        self.module = module
        self.run = module.nodes if hasattr(module, "nodes") else module  # the TreeLSTM's every node
        self.optimizer = sgd(module.parameters())
        self.batches, self.targets = batches, targets
        self.first_loss = None
        self.epoch()

    def epoch(self) -> Steps:
        steps = []
        for mb, targets in zip(self.batches, self.targets):
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(self.run(mb), targets, ignore_index=-1)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            self.optimizer.step()
            steps.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            if self.first_loss is None:
                self.first_loss = loss.item()
        return steps


class DynetTrainer:
    """`dynet_anchor --train --serve` in a process of its own (DyNet fixes autobatching at import)."""

    def __init__(self, w: TrainWorkload, batch_size: int, minibatches: int, ckpt_path: Path, data: Path | None,
                 limit: int, threads: int):
        args = [sys.executable, "-m", "edbc.bench.dynet_anchor", "--train", "--serve", "--model", w.model,
                "--autobatch", "1", "--batch-size", str(batch_size), "--minibatches", str(minibatches),
                "--checkpoint", str(ckpt_path), "--lr", str(LR), "--limit", str(limit)]
        if data is not None:
            args += ["--data", str(data)]
        self._stderr = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and block it
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        self.first_loss = self._read()["first_loss"]

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            last = self._stderr.read().strip().splitlines()[-1:]
            raise RuntimeError(f"DyNet anchor failed: {last[0] if last else 'no output'}")
        return json.loads(line)

    def epoch(self) -> Steps:
        self._proc.stdin.write("epoch\n")
        self._proc.stdin.flush()
        return [tuple(ms / 1e3 for ms in step) for step in self._read()["steps"]]

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._stderr.close()


# ----------------------------------------------------------------------------------------------

@dataclass
class Setup:
    """A workload's model (readout at its nodes), its checkpoint and instances."""

    spec: object
    ckpt: object
    instances: list
    data: Path | None  # None: synthetic
    limit: int


def setup(w: TrainWorkload, limit: int) -> Setup:
    """The first `limit` instances of the workload's data (synthetic where ../shared/data lacks it),
    and a checkpoint of the module's initial weights with vocabularies and labels built from them."""
    spec = with_readout_at(load_spec(MODELS_DIR / f"{w.model}.yaml")[0], READOUT_AT)
    path = SHARED_DATA / w.data if w.data else None
    real = path is not None and path.exists()
    raw = read_instances(spec.kind, str(path), limit) if real else synthesize(spec, limit)
    module = build_module(spec, spec.seed)
    weights = import_weights(spec, module.state_dict(), read_mapping(MAPPINGS_DIR / f"{w.model}.yaml"),
                             source=f"{type(module).__name__}.state_dict()")
    labels = build_labels([k for inst in raw for k in inst.label_texts()], spec.classes)
    if isinstance(labels, str):
        raise UsageError(f"{w.model}: {labels}")
    ckpt = new_checkpoint(spec, weights, build_vocabs(spec, raw), labels, {"command": "bench --train"})
    return Setup(spec, ckpt, encode(raw, ckpt.vocabs), path if real else None, limit)


def run_train_suite(models: list[str], sizes: dict[str, list[int]], policies: list[str | None],
                    memories: list[str], samples: int = 20, max_minibatches: int = 8, threads: int = 1,
                    dynet: bool = True, granularity: str = "cell", progress=None) -> list[TrainRow]:
    """Every selected workload x batch size: edbc per policy and memory mode, PyTorch and DyNet,
    in interleaved rounds of one epoch each."""
    rows: list[TrainRow] = []
    for w in TRAIN_WORKLOADS:
        if w.model not in models:
            continue
        s = setup(w, max(sizes[w.model]) * max_minibatches)
        data = str(s.data.relative_to(SHARED_DATA)) if s.data is not None else "synthetic"
        for size in sizes[w.model]:
            batches = full_minibatches(s.instances, size)[:max_minibatches]
            if not batches:
                continue
            targets = [torch.as_tensor(np.concatenate(readout_targets(s.spec, mb, s.ckpt.labels))) for mb in batches]
            systems: list[tuple[TrainRow, object]] = []
            with tempfile.TemporaryDirectory() as tmp:
                for policy in policies:
                    for memory in memories:
                        t = EdbcTrainer(s.spec, s.ckpt, batches, policy, memory, granularity)
                        systems.append((TrainRow(w.model, data, size, "edbc", t.model.compiler.policy.name, memory,
                                                 compile_ms=t.compile_ms, batches=t.num_batches), t))
                module = build_module(s.spec, s.spec.seed)
                label = "PyTorch per node" if hasattr(module, "nodes") else "torch.nn.LSTM packed"
                systems.append((TrainRow(w.model, data, size, label), TorchTrainer(module, batches, targets)))
                if dynet:
                    path = Path(tmp) / "init.safetensors"
                    save_checkpoint(s.ckpt, str(path))
                    t = DynetTrainer(w, size, len(batches), path, s.data, s.limit, threads)
                    systems.append((TrainRow(w.model, data, size, "DyNet agenda"), t))
                try:
                    steps = _rounds([t for _, t in systems], max(1, -(-samples // len(batches))))
                finally:
                    for _, t in systems:
                        if isinstance(t, DynetTrainer):
                            t.close()
            for (row, t), timed in zip(systems, steps):
                row.first_loss = t.first_loss
                row.samples = len(timed)
                row.ms = statistics.median(sum(s) for s in timed) * 1e3
                row.phases = {k: statistics.median(s[i] for s in timed) * 1e3 for i, k in enumerate(PHASES)}
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def _rounds(systems: list, rounds: int) -> list[Steps]:
    """`rounds` epochs of every system, one epoch each in turn, starting one later each round."""
    steps: list[Steps] = [[] for _ in systems]
    for r in range(rounds):
        for k in range(len(systems)):
            i = (r + k) % len(systems)
            steps[i] += systems[i].epoch()
    return steps


def run_train_bench(models: list[str] | None = None, batch_sizes: str | None = None,
                    policies: list[str] | None = None, memories: list[str] | None = None, samples: int = 20,
                    max_minibatches: int = 8, granularity: str = "cell", threads: int = 1, dynet: bool = True,
                    out_dir: str = "benchmarks", progress=None) -> str:
    """`edbc bench --train`: time training steps of the workloads (default: both) at their batch sizes
    (default: 25 and 64 for the TreeLSTM, 32 for the tagger; `batch_sizes` gives every model the same
    ones), edbc under each policy (default: the resolved default) and memory mode (default: all),
    with PyTorch and DyNet; write train_results.md, train_results.json and train_throughput.png to
    `out_dir` and return the markdown."""
    import platform

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out {out_dir}: not a directory; expected a folder for train_results.md, "
                         "train_results.json and train_throughput.png")
    known = [w.model for w in TRAIN_WORKLOADS]
    models = models or known
    for m in models:
        if m not in known:
            raise UsageError(f"--models: '{m}' has no training workload; expected some of: {', '.join(known)}")
    require_plotting()
    policies = policies or [None]
    memories = memories or list(PLANNERS)
    for p in policies:
        for m in memories:
            CompileOptions(p, granularity, m)
    if samples < 1 or max_minibatches < 1:
        raise UsageError("--samples and --max-minibatches must be at least 1")
    try:
        given = [int(b) for b in batch_sizes.split(",") if b] if batch_sizes else None
    except ValueError:
        raise UsageError(f"--batch-sizes: expected comma-separated integers, got {batch_sizes!r}") from None
    if given is not None and (not given or min(given) < 1):
        raise UsageError(f"--batch-sizes: expected positive integers, got {batch_sizes!r}")
    sizes = {w.model: given or list(w.batch_sizes) for w in TRAIN_WORKLOADS}
    use_dynet = dynet and dynet_available()
    rows = run_train_suite(models, sizes, policies, memories, samples, max_minibatches, threads,
                           use_dynet, granularity, progress)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": threads, "samples": samples, "max_minibatches": max_minibatches, "lr": LR,
            "granularity": granularity, "dynet": "installed" if use_dynet else "not installed (pip install .[bench])"}
    write_train_results(rows, Path(out_dir), meta)
    return (Path(out_dir) / "train_results.md").read_text()


# ----------------------------------------------------------------------------------------------
# Output

def write_train_results(rows: list[TrainRow], out_dir: Path, meta: dict) -> None:
    write_results(rows, out_dir, meta, ("train_results", "train_throughput"), train_markdown, plot_training)


def _dynet(rows: list[TrainRow], r: TrainRow) -> TrainRow | None:
    return next((d for d in rows if d.system == "DyNet agenda" and (d.model, d.batch_size) == (r.model, r.batch_size)),
                None)


def train_markdown(rows: list[TrainRow], meta: dict) -> str:
    goals = {w.model: w.goal for w in TRAIN_WORKLOADS}
    lines = ["# edbc training benchmark", "",
             f"{meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s); hidden 128. One step = "
             f"forward + backward + SGD update (lr {meta['lr']}) on the mean NLL of every node's (token's) "
             f"label, from the same initial weights. ms per mini-batch: the median over at least "
             f"{meta['samples']} timed steps per system, in interleaved rounds of one epoch "
             f"({meta['max_minibatches']} mini-batches) each, after a warm-up epoch (where edbc compiles). "
             f"DyNet: {meta['dynet']}.", ""]

    def cells(r: TrainRow) -> list[str]:
        d = _dynet(rows, r)
        p = r.phases
        return [str(r.batch_size), r.system, r.policy or "-", r.memory or "-", f"{r.ms:.2f}",
                f"{r.instances_per_s:.0f}", f"{d.ms / r.ms:.2f}x" if d is not None and r.ms else "-",
                f"{p['forward']:.2f}", f"{p['backward']:.2f}", f"{p['update']:.2f}", f"{r.first_loss:.5f}",
                optional_cell(r.compile_ms, ".1f"), optional_cell(r.batches, ".1f")]

    lines += model_tables(rows, lambda model, mine: f"{model} ({mine[0].data}, goal: edbc >= {goals[model]}x DyNet)",
                          ["B", "system", "policy", "memory", "ms / mini-batch", "instances / s", "vs DyNet",
                           "forward", "backward", "update", "first loss", "compile ms", "batches"], cells)
    return "\n".join(lines)


def plot_training(rows: list[TrainRow], path: Path, meta: dict) -> None:
    """Training throughput per workload and system (log scale); edbc's bars carry their ratio to DyNet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def system(r: TrainRow) -> str:
        if r.system == "edbc":
            return f"edbc, memory {r.memory}"
        return r.system if r.system == "DyNet agenda" else "PyTorch (per node;\nnn.LSTM packed)"

    groups = list(dict.fromkeys((r.model, r.batch_size) for r in rows))
    best: dict[tuple, TrainRow] = {}
    for r in rows:  # the fastest policy of each memory mode
        key = (r.model, r.batch_size, system(r))
        if key not in best or r.instances_per_s > best[key].instances_per_s:
            best[key] = r
    systems = list(dict.fromkeys(k[2] for k in best))
    colors = dict(zip(systems, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(max(7, 2.4 * len(groups)), 4.5))
    width = 0.8 / max(1, len(systems))
    labelled: set[str] = set()
    for i, g in enumerate(groups):
        present = [name for name in systems if (*g, name) in best]
        for k, name in enumerate(present):
            r = best[(*g, name)]
            x = i + (k - (len(present) - 1) / 2) * width
            ax.bar(x, r.instances_per_s, width, color=colors[name], label=None if name in labelled else name)
            labelled.add(name)
            d = _dynet(rows, r)
            if r.system == "edbc" and d is not None:
                ax.annotate(f"{d.ms / r.ms:.2f}x", (x, r.instances_per_s), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\nB={b}" for m, b in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("instances / s (log scale)")
    ax.set_title(f"Training throughput (forward + backward + SGD), {meta['threads']} thread(s); "
                 "edbc's ratio to DyNet on its bars", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
