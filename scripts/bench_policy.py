"""The learned FSM policy against the heuristics: batches, scheduling time, and the optimum.

Three markdown tables:

1. For every bundled model on its held-out data (SST test, lattice test at B=64,
   WikiNER dev at B=32, synthetic pairs for seq2seq), at cell and op level:
   batches summed over all mini-batches under depth, agenda, typewise and the
   shipped FSM, against the lower bound, and the FSM's fallbacks.
2. Scheduling time per mini-batch (median, ms) of each policy on freshly built
   graphs, analyses included (the FSM target: under 1 ms for 64 SST trees).
3. The FSM against `optimal` on small held-out graphs (single instances or a few,
   at most 60 nodes) where the exact search finishes: mean and worst ratio.

    python scripts/bench_policy.py [--models treelstm,lattice_lstm] [--levels cell,op]
                                   [--small 40] [--timing-minibatches 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import load_data, load_spec, minibatches, resolve_policy, shipped_policy_path  # noqa: E402
from edbc.bench.suite import WORKLOADS  # noqa: E402
from edbc.graph import build_graph, graph_at  # noqa: E402
from edbc.policy.optimal import against_optimal  # noqa: E402
from edbc.schedule import lower_bound, verify_schedule  # noqa: E402
from edbc.settings import MODELS_DIR, SHARED_DATA  # noqa: E402

HEURISTICS = ("depth", "agenda", "typewise")
TYPEWISE = "typewise"
SMALL_NODES = 60


def heldout(w):
    spec, _ = load_spec(MODELS_DIR / f"{w.model}.yaml")
    path = SHARED_DATA / w.data if w.data else None
    real = path is not None and path.exists()
    # Synthetic held-out data: another seed than the training data of the shipped policies (0).
    data = load_data(spec, str(path) if real else None, None if real else 8 * w.batch_size, seed=0 if real else 7)
    return spec, data


def graphs_of(spec, instances, batch_size, level):
    return [graph_at(spec, mb, level) for mb in minibatches(instances, batch_size)]


def batches_table(workloads, levels):
    print("Batches summed over every held-out mini-batch (fewer is better); fsm = the shipped policy\n")
    print("| model | data | B | level | mini-batches | depth | agenda | typewise | fsm | lower bound | "
          "fsm / bound | fsm vs typewise | fallbacks | fsm <= best heuristic |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for w in workloads:
        spec, data = heldout(w)
        for level in levels:
            graphs = graphs_of(spec, data.instances, w.batch_size, level)
            counts = {p: sum(resolve_policy(p, spec, level).schedule(g)[0].num_batches for g in graphs)
                      for p in HEURISTICS}
            bound = sum(lower_bound(g) for g in graphs)
            fsm = fallbacks = None
            if shipped_policy_path(spec.name, level).exists():
                policy = resolve_policy("fsm", spec, level)
                fsm = fallbacks = 0
                for g in graphs:
                    s, f = policy.schedule(g)
                    verify_schedule(g, s)
                    fsm += s.num_batches
                    fallbacks += f
            name = Path(data.source).name if data.source != "synthetic" else "synthetic"
            cells = [f"{counts[p]}" for p in HEURISTICS]
            verdict = "-" if fsm is None else ("yes" if fsm <= min(counts.values()) else "NO")
            print(f"| {spec.name} | {name} | {w.batch_size} | {level} | {len(graphs)} | {' | '.join(cells)} | "
                  f"{fsm if fsm is not None else '-'} | {bound} | "
                  f"{f'{fsm / bound:.3f}' if fsm is not None else '-'} | "
                  f"{f'{100 * (fsm / counts[TYPEWISE] - 1):+.1f} %' if fsm is not None else '-'} | "
                  f"{fallbacks if fallbacks is not None else '-'} | {verdict} |", flush=True)


def timing_table(workloads, max_minibatches):
    print(f"\nScheduling time per mini-batch, cell level (median ms over up to {max_minibatches} full "
          "mini-batches, each on a freshly built graph so that every analysis is paid for)\n")
    print("| model | B | nodes | depth | agenda | typewise | fsm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        spec, data = heldout(w)
        batches = [mb for mb in minibatches(data.instances, w.batch_size) if len(mb) == w.batch_size]
        batches = batches[:max_minibatches]
        names = list(HEURISTICS) + (["fsm"] if shipped_policy_path(spec.name, "cell").exists() else [])
        row = {}
        for name in names:
            policy = resolve_policy(name, spec, "cell")
            times = []
            for _ in range(3):
                for mb in batches:
                    g = build_graph(spec, mb)
                    t0 = time.perf_counter()
                    policy.schedule(g)
                    times.append((time.perf_counter() - t0) * 1e3)
            row[name] = statistics.median(times)
        nodes = statistics.mean(build_graph(spec, mb).num_nodes for mb in batches)
        cells = [f"{row[p]:.3f}" if p in row else "-" for p in (*HEURISTICS, "fsm")]
        print(f"| {spec.name} | {w.batch_size} | {nodes:.0f} | {' | '.join(cells)} |", flush=True)


def small_graphs(spec, instances, per_model):
    """Graphs of 1, 2 or 3 consecutive held-out instances (a third each) with at most SMALL_NODES nodes."""
    out = []
    quotas = (per_model - 2 * (per_model // 3), per_model // 3, per_model // 3)
    for size, quota in zip((1, 2, 3), quotas):
        taken = 0
        for mb in minibatches(instances, size):
            if taken == quota:
                break
            g = build_graph(spec, mb)
            if g.num_nodes <= SMALL_NODES:
                out.append(g)
                taken += 1
    return out


def optimal_table(workloads, per_model):
    print(f"\nFSM against the exact optimum on small held-out graphs (at most {SMALL_NODES} nodes, "
          "1 to 3 instances, cell level; graphs where the search gives up are counted and skipped)\n")
    print("| model | graphs | search gave up | mean nodes | mean fsm / optimal | worst | typewise / optimal | "
          "graphs fsm = optimal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios_all = []
    for w in workloads:
        spec, data = heldout(w)
        if not shipped_policy_path(spec.name, "cell").exists():
            continue
        policy = resolve_policy("fsm", spec, "cell")
        typewise = resolve_policy("typewise", spec, "cell")
        by_name, nodes, gave_up = against_optimal(
            small_graphs(spec, data.instances, per_model),
            {"fsm": lambda g: policy.schedule(g)[0].num_batches,
             "typewise": lambda g: typewise.schedule(g)[0].num_batches})
        ratios, tw = by_name["fsm"], by_name["typewise"]
        if not ratios:
            continue
        ratios_all += ratios
        print(f"| {spec.name} | {len(ratios)} | {gave_up} | {statistics.mean(nodes):.0f} | "
              f"{statistics.mean(ratios):.4f} | {max(ratios):.3f} | {statistics.mean(tw):.4f} | "
              f"{sum(r == 1 for r in ratios)} |", flush=True)
    if ratios_all:
        print(f"| all | {len(ratios_all)} | | | {statistics.mean(ratios_all):.4f} | {max(ratios_all):.3f} | | "
              f"{sum(r == 1 for r in ratios_all)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(w.model for w in WORKLOADS))
    parser.add_argument("--levels", default="cell,op")
    parser.add_argument("--small", type=int, default=40, help="small graphs per model for the optimum table")
    parser.add_argument("--timing-minibatches", type=int, default=8)
    parser.add_argument("--tables", default="batches,timing,optimal")
    args = parser.parse_args()
    workloads = [w for w in WORKLOADS if w.model in args.models.split(",")]
    tables = args.tables.split(",")
    if "batches" in tables:
        batches_table(workloads, args.levels.split(","))
    if "timing" in tables:
        timing_table(workloads, args.timing_minibatches)
    if "optimal" in tables:
        optimal_table(workloads, args.small)


if __name__ == "__main__":
    main()
