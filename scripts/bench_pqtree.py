"""Benchmark `edbc.memory.pqtree`: many safe reduces over a large ground set.

Sets are random intervals (sizes 2..64) of a hidden random permutation of the
leaves, mixed with random sets (one in ten), which mostly cannot be met together
with them; a random set kept early makes later intervals fail, so how many
are kept varies with the seed.
Two more runs use intervals only: all must be kept. What they leave free is
mostly neighbours in the hidden permutation that no interval boundary
separates (each such pair may swap): with 5,000 leaves about 10^28 orders
remain, with five times fewer leaves just the hidden permutation and its
reverse. Prints a markdown table.

    python scripts/bench_pqtree.py [--leaves 5000] [--sets 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.memory.pqtree import PQTree, reduce_all  # noqa: E402


def make_sets(rng: random.Random, hidden: list[int], count: int,
              random_share: float) -> list[list[int]]:
    """`count` sets: random intervals of `hidden`, a `random_share` of them
    replaced by uniformly random sets of the same sizes."""
    n = len(hidden)
    sets = []
    for _ in range(count):
        size = rng.randint(2, min(64, n))
        if rng.random() < random_share:
            sets.append(rng.sample(range(n), size))
        else:
            start = rng.randrange(n - size + 1)
            sets.append(hidden[start:start + size])
    return sets


def log10_floor(value: int) -> int:
    """floor(log10(value)) for huge ints (str() refuses past 4300 digits)."""
    digits = int((value.bit_length() - 1) * math.log10(2))
    while 10 ** (digits + 1) <= value:
        digits += 1
    while 10 ** digits > value:
        digits -= 1
    return digits


def run(name: str, leaves: int, sets: list[list[int]]) -> dict[str, object]:
    tree = PQTree(leaves)
    started = time.perf_counter()
    kept = reduce_all(tree, sets)
    seconds = time.perf_counter() - started
    # Check outside the timing: the frontier satisfies every kept set.
    position = {leaf: i for i, leaf in enumerate(tree.frontier())}
    for s, keep in zip(sets, kept):
        if keep:
            spots = [position[x] for x in s]
            assert max(spots) - min(spots) == len(s) - 1, "frontier breaks a kept set"
    elements = sum(len(s) for s in sets)
    count = tree.count_permutations()
    return {
        "run": name,
        "sets": len(sets),
        "leaves": leaves,
        "kept": sum(kept),
        "dropped": len(sets) - sum(kept),
        "seconds": f"{seconds:.2f}",
        "us/element": f"{seconds * 1e6 / elements:.1f}",
        "permutations left": str(count) if count < 10**12 else f"~10^{log10_floor(count)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=5000)
    parser.add_argument("--sets", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    hidden = list(range(args.leaves))
    rng.shuffle(hidden)
    mixed = make_sets(rng, hidden, args.sets, random_share=0.1)
    intervals = make_sets(rng, hidden, args.sets, random_share=0.0)
    dense_hidden = list(range(args.leaves // 5))
    rng.shuffle(dense_hidden)
    dense = make_sets(rng, dense_hidden, args.sets, random_share=0.0)
    rows = [
        run("intervals + 10% random sets", args.leaves, mixed),
        run("intervals only", args.leaves, intervals),
        run("intervals only, fewer leaves", len(dense_hidden), dense),
    ]
    assert all(row["dropped"] == 0 for row in rows[1:]), "an interval was dropped"

    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
