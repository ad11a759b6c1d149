"""Make n-ary trees of binarised ones (SST): `edbc.data.tree.merge_same_label` on every tree.

    python scripts/nary_trees.py ../shared/data/sst/test.txt -o sst_nary_test.txt [--max-children 4]

Prints the share of internal nodes with each number of children. The output is written atomically
and never over the input.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from edbc.artifact import check_output, write_atomic
from edbc.data.tree import merge_same_label, read_trees
from edbc.errors import EdbcError


def main() -> None:
    try:
        convert()
    except EdbcError as e:  # one line and the error's exit code, as edbc itself reports
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def convert() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", help="PTB-bracket trees, one a line")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--max-children", type=int, default=4)
    args = parser.parse_args()
    check_output(args.output, [args.trees])
    merged = [merge_same_label(t, args.max_children) for t in read_trees(args.trees)]
    write_atomic(args.output, "".join(t.to_ptb() + "\n" for t in merged).encode())
    arity = np.concatenate([t.arity for t in merged])
    counts = np.bincount(arity[arity > 0])
    shares = ", ".join(f"{k}: {100 * c / counts.sum():.0f} %" for k, c in enumerate(counts) if c)
    print(f"{len(merged)} trees; children a node: {shares}")


if __name__ == "__main__":
    main()
