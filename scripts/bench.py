"""Benchmark every bundled model under every policy, and TreeLSTM against per-node PyTorch.

Forward only, hidden 128, one torch thread by default. edbc's time is end to
end from parsed instances to outputs: graph build + schedule + memory layout +
execution, median over full mini-batches after a warm-up pass. Prints markdown
tables: per model and policy, batches per mini-batch against the lower bound
and ms per mini-batch; then TreeLSTM against a plain per-node PyTorch
implementation with the same weights (outputs compared before timing).

    python scripts/bench.py [--models treelstm,lattice_lstm] [--granularity cell]
                            [--max-minibatches 8] [--passes 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import compile_batch  # noqa: E402
from edbc.bench.baselines import PerNodeTreeLSTM  # noqa: E402
from edbc.bench.suite import WORKLOADS, load_workload, measure  # noqa: E402
from edbc.runtime import Runtime  # noqa: E402
from edbc.schedule import POLICIES  # noqa: E402


def per_node_treelstm(batches, runtime: Runtime, passes: int) -> float:
    baseline = PerNodeTreeLSTM(runtime.weights)
    for mb in batches:
        baseline(mb)
    times = []
    for _ in range(passes):
        for mb in batches:
            t0 = time.perf_counter()
            baseline(mb)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(w.model for w in WORKLOADS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--granularity", default="cell", choices=["cell", "op"])
    parser.add_argument("--max-minibatches", type=int, default=8, help="full mini-batches per model")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the mini-batches")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = args.models.split(",")
    policies = args.policies.split(",")

    print(f"edbc, {args.granularity} level, {args.threads} thread(s), forward only, hidden 128; "
          f"ms per mini-batch end to end (median), batches per mini-batch (mean)\n")
    print("| model | data | B | policy | batches | lower bound | ms / mini-batch | instances / s |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    tree_rows = {}
    for w in WORKLOADS:
        if w.model not in wanted:
            continue
        spec, source, batches = load_workload(w, max_minibatches=args.max_minibatches)
        runtime = Runtime(spec)
        for policy in policies:
            m = measure(spec, source, batches, policy, args.granularity, runtime, args.passes)
            print(f"| {m.model} | {m.data} | {m.batch_size} | {policy} | {m.batches:.1f} | "
                  f"{m.lower_bound:.1f} | {m.ms:.2f} | {m.batch_size / m.ms * 1e3:.0f} |", flush=True)
            if w.model == "treelstm":
                tree_rows[policy] = m
        if w.model == "treelstm":
            check = batches[0]
            ref = PerNodeTreeLSTM(runtime.weights)(check)
            c = compile_batch(spec, check, "agenda", args.granularity)
            out = runtime.prepare(c.graph, c.schedule, c.layout).run()
            assert (out - ref).abs().max().item() <= 1e-4, "edbc differs from per-node PyTorch"
            tree_rows["per-node"] = per_node_treelstm(batches, runtime, args.passes)

    if tree_rows:
        base = tree_rows.pop("per-node")
        print(f"\nTreeLSTM: edbc against plain per-node PyTorch (same trees, same weights)\n")
        print("| system | ms / mini-batch | speed-up vs per node |")
        print("|---|---:|---:|")
        for policy, m in tree_rows.items():
            print(f"| edbc {policy} | {m.ms:.2f} | {base / m.ms:.1f}x |")
        print(f"| PyTorch per node | {base:.2f} | 1.0x |")


if __name__ == "__main__":
    main()
