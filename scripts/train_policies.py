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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = "../shared/data"
SST = ["--data", f"{DATA}/sst/train.txt", "--heldout", f"{DATA}/sst/dev.txt"]
LATTICE = ["--data", f"{DATA}/lattice/train.txt", "--heldout", f"{DATA}/lattice/dev.txt"]
SYNTHETIC = ["--limit", "2048"]

# model -> (data options, mini-batch size)
RUNS = {
    "treelstm": (SST, 64),
    "treegru": (SST, 64),
    "mvrnn": (SST, 64),
    "treelstm_onnx": (SST, 64),
    "bilstm_tagger": (SYNTHETIC, 32),
    "lstm_seq2seq": (SYNTHETIC, 64),
    "lattice_lstm": (LATTICE, 64),
    "lattice_gru": (LATTICE, 64),
    "dag_rnn": (SYNTHETIC, 64),
}


def command(model: str, level: str) -> list[str]:
    options, batch_size = RUNS[model]
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
