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

With `--cost-model`, it measures instead what the constants of pq's cost model
(`edbc.memory.planner.planning_pays`) stand for, 1 thread: an index_select of k
rows (what a gather costs), and per model and mini-batch the pq planning time
and the execution time pq saves against none, each next to the model's estimate.

    python scripts/bench_memory.py --cost-model [--models treelstm,bilstm_tagger,lattice_lstm]
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
from edbc.memory import planner  # noqa: E402
from edbc.memory.operands import NO_STATS, memory_stats, never_views, operand_table  # noqa: E402
from edbc.runtime import Runtime  # noqa: E402
from edbc.schedule import schedule  # noqa: E402
from edbc.settings import MODELS_DIR, NO_SPLITS, SHARED_DATA, SHARED_SPLITS  # noqa: E402
from edbc.spec.ops import set_reduction_of  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--policy", default="agenda")
    parser.add_argument("--minibatches", type=int, default=8, help="mini-batches per model (the first ones)")
    parser.add_argument("--models", help="comma-separated model names (default: every spec in configs/models)")
    parser.add_argument("--cost-model", action="store_true", help="measure what pq's cost model stands for")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
    if args.cost_model:
        cost_model(args.models.split(",") if args.models else ["treelstm", "bilstm_tagger", "lattice_lstm"],
                   args.batch_size, args.policy, args.minibatches)
        return

    print(f"{args.policy} policy, mini-batches of {args.batch_size}, first {args.minibatches} mini-batches; "
          "per mini-batch: gathers, MiB they copy, operand bytes served as views, torch calls inside "
          "cell kernels; pq planning ms (median, max)\n")
    print("| model | data | level | gathers pq / none | MiB pq / none | pq / none bytes | floor "
          "| views pq / none | calls in cells pq / none | plan ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
        data, source = _data(spec, args.batch_size * args.minibatches)
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
                for mode, lay_out in PLANNERS.items():
                    t0 = time.perf_counter()
                    planned, layout = lay_out(graph, sched)
                    if mode == "pq":
                        plan_ms.append((time.perf_counter() - t0) * 1e3)
                    cells = {t.program: compilers[mode].cell(t.program).plan for t in graph.types
                             if set_reduction_of(t.program) is None}
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


def _data(spec, limit: int):
    rel = SHARED_SPLITS.get(spec.kind, NO_SPLITS)[2]
    path = SHARED_DATA / rel if rel else None
    data = load_data(spec, str(path) if path is not None and path.exists() else None, limit=limit)
    return data, rel if data.source != "synthetic" else "synthetic"


def _median_s(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost_model(names: list[str], batch_size: int, policy: str, count: int) -> None:
    import torch
    torch.set_num_threads(1)
    arena = torch.randn(20_000, 128)
    print("index_select of k rows of 128 floats from a 20,000-row arena (a gather), median of 2,000:\n")
    print("| k | us | estimate us |\n|---:|---:|---:|")
    for k in (16, 64, 256):
        rows = torch.randint(0, len(arena), (k,))
        seconds = _median_s(lambda: [torch.index_select(arena, 0, rows) for _ in range(2000)]) / 2000
        estimate = planner.GATHER_S + planner.GATHER_BYTE_S * k * 512
        print(f"| {k} | {seconds * 1e6:.2f} | {estimate * 1e6:.2f} |")
    print(f"\nper mini-batch ({policy}, B={batch_size}, cell level, first {count}): pq planning against "
          "PLAN_S + PLAN_BATCH_S x batches, and the execution pq saves against the unplanned layout's "
          "gathers (the model's upper bound on that saving), ms\n")
    print("| model | batches | plan ms | estimate | saved ms | gathers' cost |\n|---|---:|---:|---:|---:|---:|")
    for name in names:
        spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
        data, _ = _data(spec, batch_size * count)
        runtime = Runtime(spec)
        compilers = {mode: Compiler(spec, CompileOptions(policy, CELL, mode)) for mode in PLANNERS}
        rows = []
        for mb in minibatches(data.instances, batch_size):
            compiled = {mode: c.compile_batch(mb) for mode, c in compilers.items()}
            none = compiled["none"]
            plan_s = _median_s(lambda: planner.pq_layout(none.graph, none.schedule))
            run = {mode: runtime.prepare(c) for mode, c in compiled.items()}
            saved = _median_s(run["none"].run, 9) - _median_s(run["pq"].run, 9)
            cost = planner.gathers_cost(operand_table(none.graph, none.schedule, none.layout), none.graph,
                                        none.schedule)
            batches = none.schedule.num_batches
            rows.append((batches, plan_s, planner.planning_cost(batches), saved, cost))
        b, p, e, s, c = (statistics.median(col) for col in zip(*rows))
        print(f"| {name} | {b:.0f} | {p * 1e3:.2f} | {e * 1e3:.2f} | {s * 1e3:.2f} | {c * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
