"""Shared helpers of the text readers: opening files with one-line errors, Zipf sampling."""

from __future__ import annotations

import io
import re
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..inputs import out_of_memory, read_input_text


_BLANKS = " \t\r\n\f\v"  # ASCII only: a no-break space is part of a word
_INTEGER = re.compile(r"-?[0-9]+\Z")


INT32_MAX = 2**31 - 1


def is_integer(text: str) -> bool:
    """ASCII digits with an optional minus (str.isdigit also accepts digits int() refuses, like '²')."""
    return _INTEGER.match(text) is not None


def fits_int32(text: str) -> bool:
    """An integer (`is_integer`) in the int32 range, where the readers store counts, ids, types and
    labels; its length is checked first, as Python refuses to convert more than 4300 digits."""
    return is_integer(text) and len(text.lstrip("-")) <= 10 and -INT32_MAX - 1 <= int(text) <= INT32_MAX


def read_lines(path: str, what: str = "data") -> Iterator[str]:
    """The lines of a UTF-8 file, newlines as `open` gives them; a missing, unreadable, binary
    or non-regular file is a `DataError`."""
    yield from io.StringIO(read_input_text(path, what, DataError), newline=None)


def read_records(path: str, parse, limit: int | None, empty: str) -> list:
    """One record a non-blank line, `parse(line, path, lineno)` each; `empty` is the error
    for a file without any."""
    out = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip(_BLANKS):
            continue
        try:
            out.append(parse(line, path, lineno))
        except MemoryError:
            raise out_of_memory(path, lineno) from None
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(empty, path=path)
    return out


def zipf_words(rng: np.random.Generator, count: int, lexicon: int, prefix: str = "w") -> list[str]:
    """`count` words from a Zipf law (exponent 1) over `lexicon` word types."""
    p = 1.0 / np.arange(1, lexicon + 1)
    p /= p.sum()
    return [f"{prefix}{i}" for i in rng.choice(lexicon, size=count, p=p)]


def gamma_lengths(rng: np.random.Generator, count: int, mean: float, std: float,
                  minimum: int, maximum: int) -> np.ndarray:
    """Integer lengths >= minimum with the given mean and spread, capped at `maximum`."""
    excess_mean = mean - minimum
    shape = (excess_mean / std) ** 2
    scale = std ** 2 / excess_mean
    return np.minimum(minimum + np.rint(rng.gamma(shape, scale, size=count)).astype(np.int64), maximum)
