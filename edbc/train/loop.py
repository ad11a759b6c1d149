"""Training through compiled plans: `edbc train` and `edbc eval`.

Mini-batches keep their composition across epochs (the instances are shuffled
once, with the seed; each epoch shuffles the order of the mini-batches), so each
is compiled once, on first use, and its plan (and prepared executable) reused:
epochs after the first pay no graph, schedule or memory-planning cost. A step
runs the plan's forward as an autograd node (`Executable.forward`, dropout masks
drawn from the step's seed and each instance's place in the data), the loss is
the mean negative log-likelihood of the labelled readout rows, and any
`torch.optim` optimizer updates the model's `nn.Parameter`s in place (the
runtime sees the update before the next forward).

Data parallel (`edbc train --nproc N`, torchrun; `edbc.distributed`): every rank
keeps the same mini-batches and order, and takes its shard of each (contiguous,
the same for any run with N ranks), which it compiles once like the whole
mini-batch alone. Its loss is its rows' summed NLL over the labelled rows of the
whole mini-batch (known from the targets, without asking the others), so the
ranks' gradients summed by one all-reduce are those of the mini-batch's mean:
every rank takes the step one process takes. Held-out scores are gathered from
every rank's shards; only rank 0 writes files.

Files, all written atomically:

    OUTPUT                       the best checkpoint so far by held-out accuracy
    <OUTPUT stem>.last.safetensors  the latest epoch's checkpoint
    <OUTPUT stem>.resume.safetensors  what `--resume` continues from: weights, optimizer
                                 state (tensors) and the run (JSON metadata)
    <OUTPUT stem>.metrics.jsonl  one line per epoch
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import file_digest, write_atomic
from ..distributed import SINGLE, World
from ..errors import ArtifactError
from ..inputs import load_json, read_input_bytes
from ..outputs import instance_order, readout_shape, split_by_instance
from ..plan.plan import CompiledBatch
from ..runtime.dropout import Dropout
from ..settings import OPTIMIZERS, TrainSettings
from .targets import evaluate, readout_targets

RESUME_FORMAT = "edbc.train-state"
RESUME_VERSION = "1.0"


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    heldout: dict[str, float]
    instances_per_s: float
    compile_s: float
    execute_s: float
    selection: float  # the held-out figure the best checkpoint is chosen by
    communicate_s: float = 0.0  # of execute_s: the all-reduce of the ranks' gradients, waiting for them included


@dataclass
class TrainState:
    """What `--resume` needs besides the weights and the optimizer's tensors."""

    run: dict  # settings, data digests, model: must match to resume
    epoch: int = 0  # epochs done
    best: float | None = None
    history: list[dict] = field(default_factory=list)


class Batches:
    """A dataset's mini-batches, each compiled and prepared once, with its targets in result order; in
    a job of several processes, this rank's shard of each."""

    def __init__(self, model, instances: list, batch_size: int, seed: int | None, world: World = SINGLE):
        order = np.arange(len(instances)) if seed is None else np.random.default_rng(seed).permutation(len(instances))
        self.model = model
        self.world = world
        self.groups = [[instances[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
        # Each instance's place in the data: its dropout key, whatever mini-batch (and shard) it lands in;
        # here, of this rank's shard of each mini-batch.
        self.keys = [tuple(self._mine(order[s:s + batch_size].tolist())) for s in range(0, len(order), batch_size)]
        self._prepared: dict[int, tuple | None] = {}
        self._targets: dict[int, list[np.ndarray]] = {}
        self._labelled: dict[int, int] = {}
        self.compile_s = 0.0

    def __len__(self) -> int:
        return len(self.groups)

    def _mine(self, items: list) -> list:
        """This rank's shard of a mini-batch's items."""
        shard = self.world.shard(len(items))
        return items[shard.start:shard.stop]

    def targets(self, index: int) -> list[np.ndarray]:
        """Each instance's targets, for the whole mini-batch (every rank's shard)."""
        known = self._targets.get(index)
        if known is None:
            known = self._targets[index] = readout_targets(self.model.spec, self.groups[index], self.model.labels)
        return known

    def labelled(self, index: int) -> int:
        """The labelled rows of the whole mini-batch: what its mean loss divides by (counted once; a
        step asks for it every epoch)."""
        known = self._labelled.get(index)
        if known is None:
            known = self._labelled[index] = sum(int((t >= 0).sum()) for t in self.targets(index))
        return known

    def get(self, index: int):
        """(compiled shard, executable, targets in result order, per-instance targets) of this rank's
        shard of the mini-batch (all of it in one process); None when the shard is empty (a mini-batch
        smaller than the job)."""
        if index not in self._prepared:
            t0 = time.perf_counter()
            group = self._mine(self.groups[index])
            if not group:
                self._prepared[index] = None
                return None
            compiled: CompiledBatch = self.model.compiler.compile_batch(group)
            executable = self.model.runtime.prepare(compiled)
            per_instance = self._mine(self.targets(index))
            order, _ = instance_order(compiled.cell_graph)
            targets = np.empty(len(order), dtype=np.int64)
            targets[order] = np.concatenate(per_instance)  # per-instance targets back in result order
            self._prepared[index] = (compiled, executable, torch.as_tensor(targets), per_instance)
            self.compile_s += time.perf_counter() - t0
        return self._prepared[index]


def loss_of(results: torch.Tensor, targets: torch.Tensor, labelled: int | None = None) -> torch.Tensor:
    """The negative log-likelihood of the labelled rows (target -1: no label), summed and divided by
    `labelled`: by default their number (the mean); a shard's part of its mini-batch's mean with the
    mini-batch's number."""
    targets = targets.to(results.device)
    total = F.nll_loss(results, targets, ignore_index=-1, reduction="sum")
    return total / (int((targets >= 0).sum()) if labelled is None else labelled)


def score(model, batches: Batches) -> dict[str, float]:
    """Loss and accuracies of the model on every mini-batch of `batches` (forward only). In a job of
    several processes each rank runs its shards, and every rank gets the figures of all of them."""
    world = batches.world
    mine = []
    for index in range(len(batches)):
        prepared = batches.get(index)
        if prepared is not None:
            mine.extend(split_by_instance(prepared[0].cell_graph, prepared[1].run()))
    by_rank = world.gather_rows(mine, readout_shape(model.spec), everyone=True)
    rows, taken = [], [0] * world.size  # back in mini-batch order: each mini-batch's shards in rank order
    for group in batches.groups:
        bounds = world.bounds(len(group))
        for r in range(world.size):
            n = bounds[r + 1] - bounds[r]
            rows.extend(by_rank[r][taken[r]:taken[r] + n])
            taken[r] += n
    instances = [x for group in batches.groups for x in group]
    targets = [t for index in range(len(batches)) for t in batches.targets(index)]
    return evaluate(model.spec, instances, rows, targets, model.labels)


def selection_metric(kind: str) -> str:
    """The held-out figure that picks the best checkpoint: the root's accuracy for trees."""
    return "root_accuracy" if kind == "tree" else "accuracy"


def train(model, train_instances: list, heldout_instances: list, settings: TrainSettings, output: str,
          run: dict, resume: bool = False, save=None, on_step=None, on_epoch=None,
          world: World = SINGLE) -> list[Epoch]:
    """Train `model` (an `edbc.api.Model`, its weights made `nn.Parameter`s here) for `settings.epochs`
    epochs; `save(path, model, extra)` writes a checkpoint. Returns every epoch's figures, those of
    a resumed run's earlier epochs included. In a job of several processes (`world`), each rank runs
    its shard of every mini-batch, and rank 0 writes the files."""
    settings.check()
    world.agree("model, data or settings", json.dumps(run, sort_keys=True))
    module = model.module()
    params = list(module.parameters())
    # foreach: one multi-tensor update instead of a loop over the parameters (measured: 48 -> 28 ms a
    # step for Adagrad on the SST TreeLSTM with its 18,300-word embedding, 1 thread).
    kwargs = {"lr": settings.lr, "weight_decay": settings.weight_decay, "foreach": True}
    optimizer = getattr(torch.optim, OPTIMIZERS[settings.optimizer])(params, **kwargs)
    paths = output_paths(output)
    state = TrainState(run)
    if resume:
        state = _load_resume(paths["resume"], run, module, optimizer)
    # Every mini-batch is compiled once and runs forward and backward every epoch: pq planning repays
    # itself where its gathers over those runs cost more (`edbc.memory.planner.planning_pays`).
    model.compiler.runs = 2 * settings.epochs  # the same in a resumed run: its layouts, and so its sums, too
    train_batches = Batches(model, train_instances, settings.batch_size, settings.seed, world)
    held_batches = Batches(model, heldout_instances, settings.batch_size, None, world)
    metric = selection_metric(model.spec.kind)
    epochs = [Epoch(**e) for e in state.history]
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_batches))
        compile_before = train_batches.compile_s
        execute = communicate = 0.0
        total, count = 0.0, 0
        t_epoch = time.perf_counter()
        for step, index in enumerate(order.tolist()):
            prepared = train_batches.get(index)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros(())  # an empty shard adds nothing
            if prepared is not None:
                dropout = Dropout(step_seed(settings.seed, epoch, index), train_batches.keys[index])
                loss = loss_of(prepared[1].forward(dropout), prepared[2], train_batches.labelled(index))
                loss.backward()
            t1 = time.perf_counter()
            value = _sum_over_ranks(world, params, loss)
            communicate += time.perf_counter() - t1
            optimizer.step()
            execute += time.perf_counter() - t0
            n = len(train_batches.groups[index])
            total += value * n
            count += n
            if on_step is not None:
                on_step(epoch, step + 1, len(order), value)
        seconds = time.perf_counter() - t_epoch
        held = score(model, held_batches)
        figure = held.get(metric, held["accuracy"])
        e = Epoch(epoch, total / max(count, 1), held, count / max(seconds, 1e-9),
                  train_batches.compile_s - compile_before, execute, figure, communicate)
        epochs.append(e)
        improved = state.best is None or figure > state.best
        if improved:
            state.best = figure
        state.epoch = epoch
        state.history = [asdict(x) for x in epochs]
        if world.leader:
            if improved:
                save(output, model, {"epoch": epoch, "heldout": held})
            save(paths["last"], model, {"epoch": epoch, "heldout": held})
            _save_resume(paths["resume"], state, module, optimizer, run)
            write_atomic(paths["metrics"],
                         "".join(json.dumps(x, sort_keys=True) + "\n" for x in state.history).encode())
        if on_epoch is not None:
            on_epoch(e, improved)
    return epochs


def step_seed(seed: int, epoch: int, index: int) -> int:
    """The dropout seed of mini-batch `index` in `epoch`: fresh masks every step, the same on a resumed run."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def _sum_over_ranks(world: World, params: list[torch.nn.Parameter], loss: torch.Tensor) -> float:
    """Sum every rank's gradients, and losses, in one all-reduce: each rank's are its shard's part of
    the mini-batch's mean, so the sums are the mini-batch's. Returns the mini-batch's loss."""
    if world.size == 1:  # alone, a weight no row reached keeps no gradient, and the optimizer skips it
        return loss.item()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    *summed, total = world.all_reduce_sum([*grads, loss.detach().reshape(1).to(grads[0].device)])
    for p, g in zip(params, summed):
        p.grad = g
    return total.item()


def output_paths(output: str) -> dict[str, str]:
    path = Path(output)
    stem = path.with_suffix("") if path.suffix == ".safetensors" else path
    return {"best": str(path), "last": f"{stem}.last.safetensors", "resume": f"{stem}.resume.safetensors",
            "metrics": f"{stem}.metrics.jsonl"}


def _save_resume(path: str, state: TrainState, module, optimizer, run: dict) -> None:
    from safetensors.torch import save

    tensors = {f"weights/{k}": v.detach().cpu().contiguous() for k, v in module.named_weights().items()}
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for key, value in values.items():
            tensors[f"optimizer/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    metadata = {"format": RESUME_FORMAT, "version": RESUME_VERSION,
                "state": json.dumps({"run": run, "epoch": state.epoch, "best": state.best, "history": state.history},
                                    sort_keys=True)}
    write_atomic(path, save(tensors, metadata))


def _load_resume(path: str, run: dict, module, optimizer) -> TrainState:
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_input_bytes(path, "training state", ArtifactError)

    def fail(message: str):
        raise ArtifactError(f"cannot resume: {message}", path=path)

    try:
        tensors = load(data)
        length = int.from_bytes(data[:8], "little")
        meta = load_json(data[8:8 + length].decode())["__metadata__"]
        head = load_json(meta["state"])
    except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        fail("not a training state written by `edbc train`")
    if meta.get("format") != RESUME_FORMAT or type(head) is not dict:
        fail("not a training state written by `edbc train`")
    theirs = head.get("run") if type(head.get("run")) is dict else {}
    differ = sorted(k for k in set(run) | set(theirs) if k != "epochs" and run.get(k) != theirs.get(k))
    if differ:
        fail(f"it belongs to another training run ({', '.join(differ)} differ); run without --resume to start afresh")
    named = module.named_weights()
    for name, p in named.items():
        t = tensors.get(f"weights/{name}")
        if t is None or t.shape != p.shape or t.dtype != p.dtype or not bool(torch.isfinite(t).all()):
            fail(f"its weight {name} is missing, of another shape or not finite")
        with torch.no_grad():
            p.copy_(t)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    except (ValueError, KeyError, RuntimeError):
        fail("its optimizer state does not fit this optimizer")
    epoch = head.get("epoch")
    if type(epoch) is not int or epoch < 0:
        fail("its epoch count is malformed")
    history = head.get("history") if type(head.get("history")) is list else []
    return TrainState(run, epoch, head.get("best"), history)


def data_id(path: str | None, seed: int, n: int) -> str:
    """What a run's data is, for the resume check: the file's digest, or the synthetic seed and size."""
    return file_digest(path) if path is not None else f"synthetic:{seed}:{n}"
