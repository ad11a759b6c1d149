"""Memory planning figures for every bundled model: gathers with `--memory pq` against `none`.

For each model and granularity: runtime gathers and the bytes they copy per
mini-batch, the share of operand bytes served as views, torch calls inside
cell kernels (internal batches run), and the time the pq planner takes per
mini-batch (median and max; it runs at compile time). The floor is the
smallest pq / none any layout could reach: bytes of operands that can never
be views (`edbc.memory.operands.never_views`) over none's gather bytes. Each model reads its real data
set when `../shared/data` has it (SST test, lattice test, WikiNER dev), else
seeded synthetic instances. Prints a markdown table.

    python scripts/bench_memory.py [--batch-size 64] [--policy agenda] [--minibatches 8] [--models a,b]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import CompileOptions, Compiler, load_data, load_spec, minibatches  # noqa: E402
from edbc.graph import CELL, OP, graph_at  # noqa: E402
from edbc.memory import PLANNERS  # noqa: E402
from edbc.memory.operands import NO_STATS, memory_stats, never_views  # noqa: E402
from edbc.schedule import schedule  # noqa: E402
from edbc.settings import MODELS_DIR, NO_SPLITS, SHARED_DATA, SHARED_SPLITS  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--policy", default="agenda")
    parser.add_argument("--minibatches", type=int, default=8, help="mini-batches per model (the first ones)")
    parser.add_argument("--models", help="comma-separated model names (default: every spec in configs/models)")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))

    print(f"{args.policy} policy, mini-batches of {args.batch_size}, first {args.minibatches} mini-batches; "
          "per mini-batch: gathers, MiB they copy, operand bytes served as views, torch calls inside "
          "cell kernels; pq planning ms (median, max)\n")
    print("| model | data | level | gathers pq / none | MiB pq / none | pq / none bytes | floor "
          "| views pq / none | calls in cells pq / none | plan ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
        rel = SHARED_SPLITS.get(spec.kind, NO_SPLITS)[2]
        path = SHARED_DATA / rel if rel else None
        data = load_data(spec, str(path) if path is not None and path.exists() else None,
                         limit=args.batch_size * args.minibatches)
        source = rel if data.source != "synthetic" else "synthetic"
        for granularity in (CELL, OP):
            totals = {mode: NO_STATS for mode in PLANNERS}
            plan_ms = []
            floor = 0
            batches = minibatches(data.instances, args.batch_size)
            compilers = {mode: Compiler(spec, CompileOptions(args.policy, granularity, mode)) for mode in PLANNERS}
            for mb in batches:
                graph = graph_at(spec, mb, granularity)
                sched = schedule(graph, args.policy)
                floor += never_views(graph, sched)
                for mode, planner in PLANNERS.items():
                    t0 = time.perf_counter()
                    planned, layout = planner(graph, sched)
                    if mode == "pq":
                        plan_ms.append((time.perf_counter() - t0) * 1e3)
                    cells = {t.program: compilers[mode].cell(t.program).plan for t in graph.types}
                    totals[mode] = totals[mode] + memory_stats(graph, planned, layout, cells)
            n = len(batches)
            pq, none = totals["pq"], totals["none"]
            mib = 2 ** 20
            print(f"| {name} | {source} | {granularity} | {pq.gathers / n:.0f} / {none.gathers / n:.0f} "
                  f"| {pq.gather_bytes / n / mib:.2f} / {none.gather_bytes / n / mib:.2f} "
                  f"| {pq.gather_bytes / max(none.gather_bytes, 1):.2f} | {floor / max(none.gather_bytes, 1):.2f} "
                  f"| {100 * pq.view_fraction:.0f}% / {100 * none.view_fraction:.0f}% "
                  f"| {pq.cell_calls / n:.0f} / {none.cell_calls / n:.0f} "
                  f"| {statistics.median(plan_ms):.1f}, {max(plan_ms):.1f} |", flush=True)


if __name__ == "__main__":
    main()
