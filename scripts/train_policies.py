"""Train the policies shipped in plans/: one `edbc train-policy` run per bundled model and level.

Each model trains on the training split of its real data and is scored on the
dev split; the tagger (WikiNER has only a dev split, kept for evaluation),
seq2seq and the DAG model train on seeded synthetic data. Runs are single-threaded
and seeded, so they reproduce the shipped files byte for byte; `--jobs 2`
runs two at a time.

    python scripts/train_policies.py [--models treelstm,lattice_lstm] [--levels cell,op] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edbc.settings import NO_SPLITS, SHARED_DATA, SHARED_SPLITS  # noqa: E402

DATA = os.path.relpath(SHARED_DATA, ROOT)  # as written in the shipped files: ../shared/data
SYNTHETIC = ["--limit", "2048"]

# model -> (structure kind, mini-batch size)
RUNS = {
    "treelstm": ("tree", 64),
    "treegru": ("tree", 64),
    "mvrnn": ("tree", 64),
    "treelstm_onnx": ("tree", 64),
    "bilstm_tagger": ("chain", 32),
    "lstm_seq2seq": ("seq2seq", 64),
    "lattice_lstm": ("lattice", 64),
    "lattice_gru": ("lattice", 64),
    "dag_rnn": ("dag", 64),
    "childsum_treelstm": ("tree", 64),
}
# SST's trees are binarised, and its n-ary trees are files a user makes (scripts/nary_trees.py): the
# child-sum model trains and is scored on synthetic n-ary trees with their statistics.
SYNTHETIC_MODELS = {"childsum_treelstm"}


def data_options(model: str, kind: str) -> list[str]:
    """Train on the real training split and score on the dev split where the kind has both, else synthetic."""
    train, dev, _ = NO_SPLITS if model in SYNTHETIC_MODELS else SHARED_SPLITS.get(kind, NO_SPLITS)
    return ["--data", f"{DATA}/{train}", "--heldout", f"{DATA}/{dev}"] if train and dev else SYNTHETIC


def command(model: str, level: str) -> list[str]:
    kind, batch_size = RUNS[model]
    options = data_options(model, kind)
    suffix = "" if level == "cell" else f".{level}"
    # Op-level graphs are ten times larger: evaluate every 4 updates instead of 2.
    return [sys.executable, "-m", "edbc", "train-policy", f"configs/models/{model}.yaml", *options,
            "--batch-size", str(batch_size), "--granularity", level, "--seed", "0",
            "--eval-every", "2" if level == "cell" else "4", "-o", f"plans/{model}{suffix}.policy.json"]


def run(model: str, level: str) -> str:
    t0 = time.perf_counter()
    done = subprocess.run(command(model, level), cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        return f"{model} ({level}): failed, exit {done.returncode}\n{done.stderr.strip()}"
    return f"{model} ({level}), {seconds:.0f} s: {done.stdout.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(RUNS))
    parser.add_argument("--levels", default="cell")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    jobs = [(m, level) for level in args.levels.split(",") for m in args.models.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda j: run(*j), jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
