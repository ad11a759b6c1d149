"""Inputs: readers of real data sets and seeded synthetic generators, by structure kind."""

from __future__ import annotations

from ..errors import DataError
from .chain import Sequence, read_sequences, synthetic_sequences
from .dag import DagInstance, read_dags, synthetic_dags
from .lattice import Lattice, read_lattices, synthetic_lattices
from .pairs import Pair, read_pairs, synthetic_pairs
from .tree import Tree, parse_ptb, read_trees, synthetic_trees
from .vocab import Vocab, build_vocab, encode

# Structure kind -> reader(path, limit) and generator(n, seed, spec).
READERS = {"tree": read_trees, "chain": read_sequences, "seq2seq": read_pairs,
           "lattice": read_lattices, "dag": read_dags}
GENERATORS = {"tree": synthetic_trees, "chain": synthetic_sequences, "seq2seq": synthetic_pairs,
              "lattice": synthetic_lattices, "dag": synthetic_dags}


def read_instances(kind: str, path: str, limit: int | None = None) -> list:
    if kind not in READERS:
        raise DataError(f"no reader for structure kind '{kind}'", path=path)
    return READERS[kind](path, limit)


def synthesize(spec, n: int, seed: int = 0) -> list:
    return GENERATORS[spec.kind](n, seed, spec)


__all__ = ["Tree", "Sequence", "Pair", "Lattice", "DagInstance", "parse_ptb", "read_trees",
           "synthetic_trees", "Vocab", "build_vocab", "encode", "read_instances", "synthesize",
           "READERS", "GENERATORS"]
