"""Settings that come from the environment or the checkout, and the defaults and choices of the
command's options, in one place.

It imports nothing heavy (no torch, no numpy): `edbc --help` reads it and starts in a tenth of the
time that importing torch takes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UsageError, quoted

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("EDBC_CONFIG_DIR", REPO_ROOT / "configs"))
MODELS_DIR = CONFIG_DIR / "models"
DEFAULT_MODEL = MODELS_DIR / "treelstm.yaml"
# How the state_dicts of the PyTorch modules of edbc.bench.torch_models map to the bundled models.
MAPPINGS_DIR = CONFIG_DIR / "mappings"
# Shipped policy files, `<model>.policy.json` (cell level) and `<model>.op.policy.json`.
PLANS_DIR = Path(os.environ.get("EDBC_PLANS_DIR", REPO_ROOT / "plans"))
# Real data sets live beside the checkout and are read by path, never copied in.
SHARED_DATA = Path(os.environ.get("EDBC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
# Its data sets by structure kind: (training, held-out, test) files under SHARED_DATA, None where a
# set lacks the split (WikiNER has one file, kept for evaluation). The benchmarks, the scripts that
# train the shipped policies and the tests all read this table.
SHARED_SPLITS = {
    "tree": ("sst/train.txt", "sst/dev.txt", "sst/test.txt"),
    "lattice": ("lattice/train.txt", "lattice/dev.txt", "lattice/test.txt"),
    "chain": (None, None, "wikiner/dev.txt"),
}
NO_SPLITS = (None, None, None)

CHECK_TOLERANCE = 1e-4  # max |batched - reference| accepted by --check, in fp32
DEFAULT_SYNTHETIC_INSTANCES = 256  # instances generated when no --data is given
DEFAULT_BATCH_SIZE = 64
DEFAULT_MEMORY = "pq"  # memory planning mode of `run` and `compile`
DEFAULT_THREADS = 1  # torch threads; timings are comparable to single-threaded DyNet
MEMORY_LIMIT_VAR = "EDBC_MEMORY_LIMIT"  # memory the runtime may assume available (default: what the device reports)
MAX_INPUT_BYTES_VAR = "EDBC_MAX_INPUT_BYTES"  # the largest file edbc reads
DEFAULT_MAX_INPUT_BYTES = 2**30
# Multi-process jobs (edbc/distributed.py): how long a rank waits for the others at a collective before
# it gives up (a peer that died is noticed at once: its connections close), and the variable by which
# `--nproc`'s launcher tells the ranks it started that it reports their errors.
DIST_TIMEOUT_VAR = "EDBC_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT_S = 600
LAUNCHED_VAR = "EDBC_LAUNCHED"

# Graph levels: nodes are cell calls or primitive ops (`--granularity`), or the typed nodes of a bare DAG.
CELL, OP, DAG = "cell", "op", "dag"
GRANULARITIES = (CELL, OP)
DUMPS = ("graph", "schedule", "layout", "cells")  # the IRs `edbc inspect --dump` prints
# Frontier states of the learned policy (edbc/policy/encoding.py says what each one is).
ENCODINGS = ("sorted", "set", "max")
DEFAULT_ENCODING = "sorted"
# `edbc train --optimizer`: the name of its torch.optim class (looked up when training starts).
OPTIMIZERS = {"adam": "Adam", "adagrad": "Adagrad", "sgd": "SGD"}


@dataclass(frozen=True)
class TrainSettings:
    """How `edbc train` trains a model (edbc/train/loop.py)."""

    epochs: int = 10
    batch_size: int = 25
    optimizer: str = "adagrad"
    lr: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    loss_at: str | None = None  # where the readout reads while training (None: the spec's place)

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer}: expected one of: {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise UsageError(f"--weight-decay must be at least 0, got {self.weight_decay}")


WARM_STARTS = ("imitate", "none")
# Default search tries. The search pays at cell level (lattice LSTM: 5865 -> 5841 held-out batches in
# 28 s, which PPO took 54 s to reach from scratch and never reached from the cloned table) and did
# not at op level (16 rollouts of 70k-node graphs a try: 130 s for a table worse on the held-out
# graphs; PPO from the cloned table gets 20413 -> 16415). README, "Training: edbc train-policy".
SEARCH_TRIES = {CELL: 48, OP: 0, DAG: 48}


@dataclass(frozen=True)
class PolicySettings:
    """How `edbc train-policy` trains the FSM batching policy (edbc/policy/train.py)."""

    encoding: str = DEFAULT_ENCODING
    timesteps: int = 100_000
    seed: int = 0
    warm_start: str = "imitate"  # "none": PPO from a random network, no imitation or search
    search: int | None = None  # rollout tries improving the imitated table; None: `SEARCH_TRIES` by granularity
    clone_steps: int = 300  # gradient steps cloning the best table into the network
    eval_every: int = 2  # PPO updates between greedy evaluations on the held-out graphs
    target: float = 1.01  # stop once held-out batches <= target x lower bound
    n_envs: int = 4
    n_steps: int = 512  # per environment and update
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 1e-3
    gamma: float = 0.95
    ent_coef: float = 0.01
    net_arch: tuple[int, ...] = (64, 64)

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise UsageError(f"unknown encoding '{self.encoding}'; expected one of: {', '.join(ENCODINGS)}")
        if self.timesteps < 1:
            raise UsageError(f"--timesteps must be at least 1, got {self.timesteps}")
        if self.eval_every < 1:
            raise UsageError(f"--eval-every must be at least 1, got {self.eval_every}")
        if self.warm_start not in WARM_STARTS:
            raise UsageError(f"unknown warm start '{self.warm_start}'; expected one of: {', '.join(WARM_STARTS)}")
        if self.search is not None and self.search < 0:
            raise UsageError(f"--search must be at least 0, got {self.search}")

    def to_json(self) -> dict:
        return dict(asdict(self), net_arch=list(self.net_arch))


def memory_limit() -> int | None:
    """`EDBC_MEMORY_LIMIT` in bytes, or None when unset."""
    return _env_count(MEMORY_LIMIT_VAR, "bytes")


def max_input_bytes() -> int:
    limit = _env_count(MAX_INPUT_BYTES_VAR, "bytes")
    return DEFAULT_MAX_INPUT_BYTES if limit is None else limit


def dist_timeout_s() -> int:
    """`EDBC_DIST_TIMEOUT` in seconds (default 600)."""
    timeout = _env_count(DIST_TIMEOUT_VAR, "seconds")
    # 2^31 s (68 years) is forever, and keeps a longer one from overflowing the backends' milliseconds.
    return DEFAULT_DIST_TIMEOUT_S if timeout is None else min(timeout, 2**31)


def _env_count(name: str, unit: str) -> int | None:
    """A positive count (of bytes, of seconds) from the environment, read when needed so that a bad
    value is a usage error with one line, not a failure at import."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise UsageError(f"must be a positive whole number of {unit} (at most 19 digits), got '{quoted(text)}'",
                         path=name)
    return int(text)
