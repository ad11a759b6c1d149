"""A policy trained with `edbc train-policy --graphs` on lattice-like typed DAGs, scored on other
files of the same family and against the exact optimum on small ones.

Writes the family (`edbc.data.lattice_dag`, seeded): 32 training files and 16 held-out files of 8
lattices each, and 120 small files of one lattice of 2-4 characters (at most 64 nodes, where
`optimal` finishes). Trains with the default settings (or reads `--policy`), then prints two
markdown tables: held-out batches under depth, agenda, typewise and the FSM against the lower
bound, and mean FSM / optimal and typewise / optimal on the small graphs.

    python scripts/bench_lattice_dags.py [--dir out/lattice_dags] [--policy P]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc import api  # noqa: E402
from edbc.artifact import write_atomic  # noqa: E402
from edbc.data.lattice_dag import lattice_dag_text  # noqa: E402
from edbc.data.typed_dag import read_typed_dag  # noqa: E402
from edbc.policy.optimal import against_optimal  # noqa: E402
from edbc.schedule import lower_bound, schedule, verify_schedule  # noqa: E402

HEURISTICS = ("depth", "agenda", "typewise")


def write_family(folder: Path, name: str, count: int, seed: int, **shape) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = [folder / name / f"g{i:03d}.txt" for i in range(count)]
    for p in paths:
        write_atomic(p, lattice_dag_text(rng, **shape).encode())
    return [str(p) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="out/lattice_dags")
    parser.add_argument("--policy", help="a policy file to score instead of training one")
    args = parser.parse_args()
    folder = Path(args.dir)
    train = write_family(folder, "train", 32, 0)
    held = write_family(folder, "heldout", 16, 1)
    small = write_family(folder, "small", 120, 2, lattices=1, min_len=2, max_len=4)
    policy_path = args.policy or str(folder / "lattice_dags.policy.json")
    if not args.policy:
        t0 = time.perf_counter()
        trained = api.train_policy(train, policy_path, dag_files=True, heldout=held)
        print(f"trained in {time.perf_counter() - t0:.0f} s, best table from {trained.figures['best_from']}, "
              f"{len(trained.fsm.table)} states\n")
    fsm = api.resolve_policy(policy_path, None, "dag")

    graphs = [read_typed_dag(p) for p in held]
    counts = {p: sum(schedule(g, p).num_batches for g in graphs) for p in HEURISTICS}
    total, fallbacks = 0, 0
    for g in graphs:
        s, f = fsm.schedule(g)
        verify_schedule(g, s)
        total, fallbacks = total + s.num_batches, fallbacks + f
    bound = sum(lower_bound(g) for g in graphs)
    print("| graphs | depth | agenda | typewise | fsm | lower bound | fsm / bound | fsm vs typewise | fallbacks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(graphs)} held-out | {counts['depth']} | {counts['agenda']} | {counts['typewise']} | **{total}** | "
          f"{bound} | {total / bound:.3f} | {100 * (total / counts['typewise'] - 1):+.1f} % | {fallbacks} |\n")

    by_name, nodes, gave_up = against_optimal(
        (read_typed_dag(p) for p in small),
        {"fsm": lambda g: fsm.schedule(g)[0].num_batches, "typewise": lambda g: schedule(g, "typewise").num_batches})
    ratios, typewise = by_name["fsm"], by_name["typewise"]
    print("| small graphs | search gave up | mean nodes | mean fsm / optimal | worst | mean typewise / optimal | "
          "fsm optimal on |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(ratios)} | {gave_up} | {statistics.mean(nodes):.0f} | **{statistics.mean(ratios):.4f}** | "
          f"{max(ratios):.3f} | {statistics.mean(typewise):.4f} | {sum(r == 1 for r in ratios)} |")


if __name__ == "__main__":
    main()
