"""Inputs: readers of real data sets and seeded synthetic generators, by structure kind."""

from __future__ import annotations

from ..errors import DataError
from .chain import Sequence, parse_sequence, read_sequences, synthetic_sequences
from .dag import DagInstance, parse_dag, read_dags, synthetic_dags
from .lattice import Lattice, parse_lattice, read_lattices, synthetic_lattices
from .pairs import Pair, parse_pair, read_pairs, synthetic_pairs
from .tree import Tree, parse_ptb, read_trees, synthetic_trees
from .vocab import (Vocab, build_labels, build_vocab, build_vocabs, default_labels, encode, read_labels, read_vocab,
                    spec_vocabs)

# Structure kind -> reader(path, limit) and generator(n, seed, spec).
READERS = {"tree": read_trees, "chain": read_sequences, "seq2seq": read_pairs,
           "lattice": read_lattices, "dag": read_dags}
# Structure kind -> parser of one instance given as text (a line; a lattice's lines), and its type.
PARSERS = {"tree": parse_ptb, "chain": parse_sequence, "seq2seq": parse_pair, "lattice": parse_lattice,
           "dag": parse_dag}
TYPES = {"tree": Tree, "chain": Sequence, "seq2seq": Pair, "lattice": Lattice, "dag": DagInstance}
GENERATORS = {"tree": synthetic_trees, "chain": synthetic_sequences, "seq2seq": synthetic_pairs,
              "lattice": synthetic_lattices, "dag": synthetic_dags}


def read_instances(kind: str, path: str, limit: int | None = None) -> list:
    if kind not in READERS:
        raise DataError(f"no reader for structure kind '{kind}'", path=path)
    return READERS[kind](path, limit)


def parse_instances(kind: str, texts: list[str]) -> list:
    """Instances given as text, one a string (`edbc.load(...).predict(["(3 (2 a) (2 b))"])`); errors
    name the instance as `instance N`."""
    return [PARSERS[kind](text, f"instance {i}") for i, text in enumerate(texts)]


def synthesize(spec, n: int, seed: int = 0) -> list:
    return GENERATORS[spec.kind](n, seed, spec)


__all__ = ["Tree", "Sequence", "Pair", "Lattice", "DagInstance", "parse_ptb", "read_trees",
           "synthetic_trees", "Vocab", "build_vocab", "build_vocabs", "spec_vocabs", "build_labels",
           "default_labels", "read_vocab", "read_labels", "encode", "read_instances", "parse_instances", "synthesize", "TYPES",
           "READERS", "GENERATORS"]
