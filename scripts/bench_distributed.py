"""Throughput of `edbc train` and `edbc run` with 1 and more processes on this machine, and what limits it.

    python scripts/bench_distributed.py [--nprocs 1,2] [--train-limit 1000] [--batch-size 25] [--rounds 2]

Each configuration runs as its own command, as a user runs it (`python -m edbc ... --nproc N --json`),
in interleaved rounds (1, 2, 1, 2, ...); the table gives each one's best round:

- training: the TreeLSTM on the first `--train-limit` SST training trees (the last 10 % held out),
  loss at every node, Adagrad, mini-batches of `--batch-size`, the SST vocabulary; two epochs, the
  second timed (its plans are compiled): instances/s, and per step the time in the plan's forward
  and backward and the optimizer (compute) and in the all-reduce of the gradients (waiting for the
  slower rank included);
- inference: `edbc run` of the TreeLSTM on SST test, mini-batches of 64: instances/s over the
  processes' own time (what the report gives), and over the command's wall time (start-up included);
- the all-reduce alone: the gradient buffer of the training run (every parameter and the loss, fp32)
  summed by N gloo processes on loopback, all of them ready (median of 50): the cost of moving it,
  without the waiting;
- a step's parts in one process (median over an epoch's mini-batches, plans compiled): forward and
  backward of the whole mini-batch and of one rank's shard of it, and Adagrad's update, which every
  rank makes in full.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from edbc.settings import MODELS_DIR, SHARED_DATA  # noqa: E402

MODEL = MODELS_DIR / "treelstm.yaml"
TRAIN_ARGS = ("--set", "dims.vocab=18300", "--loss-at", "nodes", "--epochs", "2", "--optimizer", "adagrad",
              "--lr", "0.05")


def edbc(*args) -> tuple[dict, float]:
    """The JSON `python -m edbc ARGS --json` prints, and the command's wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edbc", *map(str, args), "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"edbc {' '.join(map(str, args))} failed:\n{r.stderr}")
    return json.loads(r.stdout), time.perf_counter() - t0


def train_figures(nproc: int, limit: int, batch_size: int, directory: str) -> dict:
    out, _ = edbc("train", MODEL, "--data", SHARED_DATA / "sst/train.txt", "--limit", limit, *TRAIN_ARGS,
                  "-b", batch_size, "--nproc", nproc, "-o", Path(directory) / f"n{nproc}.safetensors")
    e = out["epochs"][-1]
    steps = -(-(limit - max(limit // 10, 1)) // batch_size)  # the last mini-batch short
    return {"instances_per_s": e["instances_per_s"], "compute_ms": (e["execute_s"] - e["communicate_s"]) / steps * 1e3,
            "allreduce_ms": e["communicate_s"] / steps * 1e3}


def run_figures(nproc: int) -> dict:
    out, wall = edbc("run", MODEL, "--data", SHARED_DATA / "sst/test.txt", "-b", 64, "--nproc", nproc)
    return {"instances_per_s": out["instances_per_s"], "wall_instances_per_s": out["num_instances"] / wall}


def _allreduce_rank(rank: int, size: int, port: int, numel: int, result) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=timedelta(seconds=60))
    buffer = torch.ones(numel)
    times = []
    for _ in range(60):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        result.put(statistics.median(times[10:]) * 1e3)
    dist.destroy_process_group()


def allreduce_ms(size: int, numel: int) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_allreduce_rank, args=(size, port, numel, result), nprocs=size, start_method="spawn")
    return result.get()


def step_parts(limit: int, batch_size: int, nproc: int) -> dict[str, float]:
    """ms per step, median: forward and backward of a whole mini-batch and of rank 0's shard of it
    among `nproc`, and the optimizer's update; and the gradient buffer's size."""
    from edbc.api import CompileOptions, Model, _training_instances, _vocabs_and_labels, load_spec
    from edbc.checkpoint import new_checkpoint
    from edbc.distributed import World
    from edbc.runtime.weights import init_weights
    from edbc.train import with_readout_at
    from edbc.train.loop import Batches, loss_of

    torch.set_num_threads(1)
    spec, text = load_spec(MODEL, {"vocab": 18300})
    raw, _, _, _ = _training_instances(spec, str(SHARED_DATA / "sst/train.txt"), None, limit, 0)
    vocabs, labels = _vocabs_and_labels(spec, raw, {}, None, None)
    ckpt = new_checkpoint(spec, init_weights(spec), vocabs, labels, {}, {"vocab": 18300})
    spec = with_readout_at(spec, "nodes")
    parts = {}
    for name, world in (("whole", World(0, 1)), ("shard", World(0, nproc))):
        model = Model(spec, text, ckpt, training=True, options=CompileOptions(None))
        params = list(model.module().parameters())
        optimizer = torch.optim.Adagrad(params, lr=0.05, foreach=True)
        batches = Batches(model, model.instances(raw), batch_size, 0, world)
        passes, updates = [], []
        for index in list(range(len(batches))) * 2:  # the first pass compiles
            _, executable, targets, _ = batches.get(index)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_of(executable.forward(), targets, batches.labelled(index)).backward()
            t1 = time.perf_counter()
            optimizer.step()
            passes.append(t1 - t0)
            updates.append(time.perf_counter() - t1)
        parts[f"forward+backward, {name}"] = statistics.median(passes[len(batches):]) * 1e3
        parts["update"] = statistics.median(updates[len(batches):]) * 1e3
    parts["numel"] = sum(p.numel() for p in params) + 1  # and the loss
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    nprocs = [int(n) for n in args.nprocs.split(",")]
    best: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(args.rounds):
            for n in nprocs:
                for kind, figures in (("train", lambda: train_figures(n, args.train_limit, args.batch_size,
                                                                      directory)),
                                      ("run", lambda: run_figures(n))):
                    f = figures()
                    print(f"round {round_ + 1}: {kind} --nproc {n}: {f}", file=sys.stderr)
                    if (kind, n) not in best or f["instances_per_s"] > best[kind, n]["instances_per_s"]:
                        best[kind, n] = f
    parts = step_parts(args.train_limit, args.batch_size, max(nprocs))
    numel = int(parts.pop("numel"))
    print(f"cores: {os.cpu_count()}; B = {args.batch_size}; gradient buffer {numel} fp32 values "
          f"({numel * 4 / 2**20:.1f} MiB)\n")
    print("| processes | train instances/s | compute ms/step | all-reduce ms/step (waiting included) | "
          "all-reduce alone ms | run instances/s | run instances/s, wall |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in nprocs:
        t, r = best["train", n], best["run", n]
        alone = allreduce_ms(n, numel) if n > 1 else 0.0
        print(f"| {n} | {t['instances_per_s']:.0f} | {t['compute_ms']:.1f} | {t['allreduce_ms']:.1f} | {alone:.1f} | "
              f"{r['instances_per_s']:.0f} | {r['wall_instances_per_s']:.0f} |")
    print(f"\none process, ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
          + f" (shard: rank 0's of {max(nprocs)})")


if __name__ == "__main__":
    main()
