"""Sequences (chain models): `word|TAG` lines as in WikiNER, or plain token lines.

A line's tokens are separated by ASCII blanks. A line whose every token holds
a `|` is tagged: the tag follows the last `|`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from .text import gamma_lengths, read_records, zipf_words

# Only ASCII blanks separate tokens, as in the tree reader.
_TOKEN = re.compile(r"[^ \t\r\n]+")


@dataclass(frozen=True, eq=False)
class Sequence:
    words: tuple[str, ...]
    tags: tuple[str, ...] | None = None
    tokens: np.ndarray | None = None  # int32 word ids after encoding

    @property
    def num_nodes(self) -> int:
        return len(self.words)

    def token_fields(self) -> dict[str, list[str]]:
        return {"word": list(self.words)}

    def label_texts(self) -> list[str]:
        return list(self.tags or ())

    def encode(self, ids: dict) -> "Sequence":
        word_id = ids["word"]
        return replace(self, tokens=np.array([word_id(w) for w in self.words], dtype=np.int32))


def parse_sequence(line: str, path: str | None = None, lineno: int | None = None) -> Sequence:
    matches = list(_TOKEN.finditer(line))
    if not matches:
        raise DataError("empty sequence; expected tokens separated by spaces", path=path, line=lineno)
    tokens = [m.group() for m in matches]
    if not all("|" in t for t in tokens):
        return Sequence(tuple(tokens))
    words, tags = [], []
    for m in matches:
        word, _, tag = m.group().rpartition("|")
        if not word or not tag:
            raise DataError(f"token {m.group()!r}: expected `word|TAG` with both parts non-empty",
                            path=path, line=lineno, column=m.start() + 1)
        words.append(word)
        tags.append(tag)
    return Sequence(tuple(words), tuple(tags))


def read_sequences(path: str, limit: int | None = None) -> list[Sequence]:
    """One sequence a line; blank lines are skipped."""
    return read_records(path, parse_sequence, limit,
                        "no sequences in the file; expected one sequence of tokens a line")


# WikiNER dev: 1,696 sentences of 23.0 tokens (sd 13.1), 1 to 144.
_LEN_MEAN, _LEN_STD, _LEN_MAX = 23.0, 13.1, 150
_LEXICON = 20_000
_TAGS = ("O",) * 8 + ("I-ORG", "I-PER", "I-LOC", "I-MISC")


def synthetic_sequences(n: int, seed: int = 0, spec=None) -> list[Sequence]:
    """`n` seeded sentences with WikiNER's length statistics."""
    rng = np.random.default_rng(seed)
    lengths = gamma_lengths(rng, n, _LEN_MEAN, _LEN_STD, 1, _LEN_MAX)
    out = []
    for length in lengths.tolist():
        words = zipf_words(rng, length, _LEXICON)
        tags = tuple(_TAGS[i] for i in rng.integers(0, len(_TAGS), size=length))
        out.append(Sequence(tuple(words), tags))
    return out
