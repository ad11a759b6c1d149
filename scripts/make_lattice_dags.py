"""Write seeded lattice-like typed DAG files (`edbc.data.lattice_dag`): a family to train a policy
on with `edbc train-policy --graphs` and to test it on other files of the same family.

    python scripts/make_lattice_dags.py -o out/dags --count 48 --lattices 8 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.artifact import write_atomic  # noqa: E402
from edbc.data.lattice_dag import lattice_dag_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True, help="folder to write g000.txt, g001.txt, ... into")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--lattices", type=int, default=8, help="lattices a graph (a mini-batch)")
    parser.add_argument("--min-len", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        text = lattice_dag_text(rng, args.lattices, args.min_len, args.max_len)
        write_atomic(Path(args.output) / f"g{i:03d}.txt", text.encode())


if __name__ == "__main__":
    main()
