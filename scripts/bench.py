"""TreeLSTM on SST: ms per mini-batch of edbc under each policy, against plain per-node PyTorch.

Forward only, hidden 128, one torch thread by default. edbc's time is end to
end from parsed instances to outputs: graph build + schedule + memory layout +
execution. Every system runs the same trees with the same weights; outputs
are compared against the per-node baseline before anything is timed. Prints a
markdown table (median over mini-batches, after one warm-up pass).

    python scripts/bench.py [--data ../shared/data/sst/dev.txt] [--batch-size 64] [--passes 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import compile_batch, load_data, load_spec, minibatches  # noqa: E402
from edbc.bench.baselines import PerNodeTreeLSTM  # noqa: E402
from edbc.runtime import Runtime  # noqa: E402
from edbc.schedule import POLICIES, lower_bound  # noqa: E402
from edbc.settings import MODELS_DIR, SHARED_DATA  # noqa: E402


def time_per_minibatch(fn, batches, passes: int) -> list[float]:
    for mb in batches:  # warm-up pass
        fn(mb)
    times = []
    for _ in range(passes):
        for mb in batches:
            t0 = time.perf_counter()
            fn(mb)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "sst" / "dev.txt"),
                        help="PTB trees; synthetic trees when the file is absent")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--granularity", default="cell", choices=["cell", "op"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec, _ = load_spec(MODELS_DIR / "treelstm.yaml")
    data = load_data(spec, args.data if Path(args.data).exists() else None)
    # Full mini-batches only, so every sample times the same amount of work.
    batches = [mb for mb in minibatches(data.instances, args.batch_size) if len(mb) == args.batch_size]
    runtime = Runtime(spec)
    baseline = PerNodeTreeLSTM(runtime.weights)

    rows = []
    for policy in POLICIES:
        def edbc_run(mb, policy=policy):
            c = compile_batch(spec, mb, policy, args.granularity)
            return runtime.prepare(c.graph, c.schedule, c.layout).run()

        for mb in batches[:2]:
            error = (edbc_run(mb) - baseline(mb)).abs().max().item()
            assert error <= 1e-4, f"{policy}: edbc differs from per-node PyTorch by {error}"
        compiled = [compile_batch(spec, mb, policy, args.granularity) for mb in batches]
        n_batches = statistics.mean(c.schedule.num_batches for c in compiled)
        bound = statistics.mean(lower_bound(c.graph) for c in compiled)
        ms = statistics.median(time_per_minibatch(edbc_run, batches, args.passes))
        rows.append((f"edbc {policy} ({args.granularity})", f"{n_batches:.1f}", f"{bound:.1f}", ms))
    ms = statistics.median(time_per_minibatch(baseline, batches, args.passes))
    rows.append(("PyTorch per node", "-", "-", ms))

    base = rows[-1][3]
    print(f"TreeLSTM, {data.source}: {len(batches)} mini-batches of {args.batch_size}, hidden 128, "
          f"{args.threads} thread(s), forward only, median ms per mini-batch end to end\n")
    print("| system | batches | lower bound | ms / mini-batch | trees / s | speed-up vs per node |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, nb, lb, ms in rows:
        print(f"| {name} | {nb} | {lb} | {ms:.2f} | {args.batch_size / ms * 1e3:.0f} | {base / ms:.1f}x |")


if __name__ == "__main__":
    main()
