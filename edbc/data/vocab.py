"""Vocabularies: token strings to ids below a cap, id 0 for the unknown word."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

from ..spec.model import VocabSpec

UNKNOWN = 0


@dataclass(frozen=True, eq=False)
class Vocab:
    spec: VocabSpec
    ids: dict[str, int]  # empty for hashed vocabularies

    def lookup(self, word: str) -> int:
        if self.spec.build == "hash":
            return 1 + zlib.crc32(word.encode()) % (self.spec.size - 1)
        return self.ids.get(word, UNKNOWN)


def build_vocab(spec: VocabSpec, words) -> Vocab:
    """The `size - 1` most frequent words get ids 1.. in order of frequency (ties by spelling)."""
    if spec.build == "hash":
        return Vocab(spec, {})
    counts = Counter(words)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[: spec.size - 1]
    return Vocab(spec, {w: i for i, w in enumerate(ranked, start=1)})


def encode(instances: list, vocabs: dict[str, VocabSpec]) -> tuple[list, dict[str, Vocab]]:
    """Build each token field's vocabulary from the instances, then give every token its id."""
    fields: dict[str, list[str]] = {name: [] for name in vocabs}
    for inst in instances:
        for name, words in inst.token_fields().items():
            if name in fields:
                fields[name].extend(words)
    built = {name: build_vocab(vocabs[name], words) for name, words in fields.items()}
    lookups = {name: v.lookup for name, v in built.items()}
    return [inst.encode(lookups) for inst in instances], built
