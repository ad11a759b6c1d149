"""Sentence pairs (encoder-decoder models): one pair a line, `source tokens ||| target tokens`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from .text import gamma_lengths, read_records, zipf_words

SEPARATOR = "|||"


@dataclass(frozen=True, eq=False)
class Pair:
    source: tuple[str, ...]
    target: tuple[str, ...]
    source_tokens: np.ndarray | None = None
    target_tokens: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.source) + len(self.target)

    def token_fields(self) -> dict[str, list[str]]:
        return {"source": list(self.source), "target": list(self.target)}

    def label_texts(self) -> list[str]:
        return []  # the readout scores target words, named by the target vocabulary

    def encode(self, ids: dict) -> "Pair":
        src, tgt = ids["source"], ids["target"]
        return replace(self, source_tokens=np.array([src(w) for w in self.source], dtype=np.int32),
                       target_tokens=np.array([tgt(w) for w in self.target], dtype=np.int32))


def parse_pair(line: str, path: str | None = None, lineno: int | None = None) -> Pair:
    if line.count(SEPARATOR) != 1:
        raise DataError(f"expected `source tokens {SEPARATOR} target tokens` (one {SEPARATOR})",
                        path=path, line=lineno)
    left, right = line.split(SEPARATOR)
    source, target = tuple(left.split()), tuple(right.split())
    if not source or not target:
        side = "source" if not source else "target"
        column = 1 if not source else line.index(SEPARATOR) + len(SEPARATOR) + 1
        raise DataError(f"the {side} side is empty; both sides need at least one token",
                        path=path, line=lineno, column=column)
    return Pair(source, target)


def read_pairs(path: str, limit: int | None = None) -> list[Pair]:
    return read_records(path, parse_pair, limit,
                        f"no sentence pairs in the file; expected `source {SEPARATOR} target` lines")


# Source sentences as long as WikiNER's (23.0 tokens, sd 13.1); targets 1.1 times as long with
# spread, the usual length ratio of translation pairs.
_LEN_MEAN, _LEN_STD, _LEN_MAX = 23.0, 13.1, 150
_RATIO_MEAN, _RATIO_STD = 1.1, 0.2
_LEXICON = 20_000


def synthetic_pairs(n: int, seed: int = 0, spec=None) -> list[Pair]:
    rng = np.random.default_rng(seed)
    lengths = gamma_lengths(rng, n, _LEN_MEAN, _LEN_STD, 1, _LEN_MAX)
    ratios = rng.normal(_RATIO_MEAN, _RATIO_STD, size=n)
    out = []
    for length, ratio in zip(lengths.tolist(), ratios.tolist()):
        target_length = int(min(_LEN_MAX, max(1, round(length * ratio))))
        out.append(Pair(tuple(zipf_words(rng, length, _LEXICON, "s")),
                        tuple(zipf_words(rng, target_length, _LEXICON, "t"))))
    return out
