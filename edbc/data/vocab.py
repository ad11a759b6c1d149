"""Vocabularies: token strings to ids below a cap, id 0 for the unknown word; label names.

A vocabulary never depends on the file being run: it comes from a checkpoint
(`edbc init` builds it from training data, the spec's `build: frequency`), or,
without one, from the spec alone (`spec_vocabs`: crc32 buckets). The same
sentence then gets the same ids in any file, with any `--limit`.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError, quoted
from ..spec.model import ModelSpec, VocabSpec
from .text import is_integer, read_lines

UNKNOWN = 0


@dataclass(frozen=True, eq=False)
class Vocab:
    """`size` ids for one token field: `words[i]` has id i + 1, anything else 0; or, with `words`
    None, a word's id is its crc32 bucket in 1..size-1."""

    name: str
    size: int
    words: tuple[str, ...] | None
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words or (), start=1)})

    @property
    def hashed(self) -> bool:
        return self.words is None

    def lookup(self, word: str) -> int:
        if self.words is None:
            return 1 + zlib.crc32(word.encode()) % (self.size - 1) if self.size > 1 else UNKNOWN
        return self._ids.get(word, UNKNOWN)


def hashed_vocab(spec: VocabSpec) -> Vocab:
    return Vocab(spec.field, spec.size, None)


def build_vocab(spec: VocabSpec, words) -> Vocab:
    """`build: frequency`: the `size - 1` most frequent words get ids 1.. in order of frequency (ties
    by spelling). `build: hash`: crc32 buckets, whatever the words."""
    if spec.build == "hash":
        return hashed_vocab(spec)
    counts = Counter(words)
    return Vocab(spec.field, spec.size, tuple(sorted(counts, key=lambda w: (-counts[w], w))[: spec.size - 1]))


def spec_vocabs(spec: ModelSpec) -> dict[str, Vocab]:
    """The vocabularies of a model without a checkpoint: from the spec alone, every field hashed."""
    return {name: hashed_vocab(v) for name, v in spec.vocabs.items()}


def build_vocabs(spec: ModelSpec, instances: list) -> dict[str, Vocab]:
    """Each token field's vocabulary from training instances (`edbc init`)."""
    fields: dict[str, list[str]] = {name: [] for name in spec.vocabs}
    for inst in instances:
        for name, words in inst.token_fields().items():
            if name in fields:
                fields[name].extend(words)
    return {name: build_vocab(spec.vocabs[name], words) for name, words in fields.items()}


def encode(instances: list, vocabs: dict[str, Vocab]) -> list:
    """Every instance with its token ids filled in."""
    lookups = {name: v.lookup for name, v in vocabs.items()}
    return [inst.encode(lookups) for inst in instances]


def default_labels(classes: int) -> tuple[str, ...]:
    """Label names without a checkpoint: the class numbers, which SST's sentiments and the
    lattice tags are."""
    return tuple(str(k) for k in range(classes))


def build_labels(labels: list[str], classes: int) -> tuple[str, ...] | str:
    """The label vocabulary of training labels (`edbc init`): integers below `classes` name their
    own class; other labels (WikiNER's tags) get classes by frequency, ties by spelling. Returns
    an error message instead when the labels do not fit `classes`."""
    counts = Counter(labels)
    if all(is_integer(k) and 0 <= int(k) < classes for k in counts):
        return default_labels(classes)
    if len(counts) > classes:
        return f"the data has {len(counts)} distinct labels, more than the readout's {classes} classes"
    ranked = tuple(sorted(counts, key=lambda k: (-counts[k], k)))
    return ranked + tuple(f"<unused {k}>" for k in range(len(ranked), classes))


def read_word_list(path: str, what: str, limit: int) -> tuple[str, ...]:
    """A file of one word (or label) a line, at most `limit` of them, distinct and non-empty; blanks
    around a line are kept out. Errors name the file and line."""
    words: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path, f"{what} list"), start=1):
        word = line.rstrip("\r\n")
        if not word.strip(" \t"):
            raise DataError(f"line {lineno} is blank; expected one {what} a line", path=path, line=lineno)
        if word in seen:
            raise DataError(f"'{quoted(word)}' appears twice (first on line {seen[word]}); expected distinct "
                            f"{what}s", path=path, line=lineno)
        seen[word] = lineno
        words.append(word)
        if len(words) > limit:
            raise DataError(f"more than {limit} {what}s; the model has room for {limit}", path=path, line=lineno)
    if not words:
        raise DataError(f"empty; expected one {what} a line", path=path)
    return tuple(words)


def read_vocab(path: str, spec: VocabSpec) -> Vocab:
    """A vocabulary given as a word list: the word on line i has id i, id 0 is the unknown word."""
    return Vocab(spec.field, spec.size, read_word_list(path, "word", spec.size - 1))


def read_labels(path: str, classes: int) -> tuple[str, ...]:
    """Label names, class 0 on the first line; exactly one per class."""
    labels = read_word_list(path, "label", classes)
    if len(labels) != classes:
        raise DataError(f"{len(labels)} labels; the readout has {classes} classes, one label a line",
                        path=path)
    return labels
