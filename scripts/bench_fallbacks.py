"""What FSM fallbacks cost: the shipped lattice LSTM policies with their whole table, half of it
(every other state) and none, on the lattice test mini-batches (B=64), each on a freshly built graph.

Prints markdown rows: level, table, states, fallbacks, batches, median ms a schedule. Run it in a
checkout of an older commit for the figures before a change (`--plans` names where the policies are).

    python scripts/bench_fallbacks.py [--plans plans]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import load_data, load_spec, minibatches  # noqa: E402
from edbc.graph import graph_at  # noqa: E402
from edbc.policy.file import load_policy  # noqa: E402
from edbc.policy.fsm import Fsm, fsm_schedule  # noqa: E402
from edbc.settings import MODELS_DIR, SHARED_DATA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default=str(Path(__file__).resolve().parent.parent / "plans"))
    args = parser.parse_args()
    spec, _ = load_spec(MODELS_DIR / "lattice_lstm.yaml")
    data = load_data(spec, str(SHARED_DATA / "lattice/test.txt"), None, 0)
    print("| level | table | states | fallbacks | batches | median ms |\n|---|---|---:|---:|---:|---:|")
    for level, name in (("cell", "lattice_lstm.policy.json"), ("op", "lattice_lstm.op.policy.json")):
        fsm = load_policy(Path(args.plans) / name).fsm
        states = sorted(fsm.table)
        for label, table in (("full", fsm.table), ("half", {s: fsm.table[s] for s in states[::2]}), ("empty", {})):
            f = Fsm(fsm.vocab, fsm.encoding, table)
            times, batches, fallbacks = [], 0, 0
            for mb in minibatches(data.instances, 64):
                g = graph_at(spec, mb, level)  # fresh: every analysis is paid for
                t0 = time.perf_counter()
                r = fsm_schedule(g, f)
                times.append(time.perf_counter() - t0)
                batches += r.schedule.num_batches
                fallbacks += r.fallbacks
            print(f"| {level} | {label} | {len(table)} | {fallbacks} | {batches} | "
                  f"{1e3 * statistics.median(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
