"""The boundary where edbc reads what users give it: files and JSON.

Every reader opens files through `read_input_bytes` / `read_input_text`: only
regular files, at most `max_input_bytes()` of them, so a path to `/dev/zero`,
a FIFO or a huge file is refused instead of read forever. `load_json` is
`json.loads` that also refuses, as `JSONDecodeError`, what Python cannot take:
nesting deeper than its recursion limit and integers too long to convert.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import InputError, LimitError
from .settings import MAX_INPUT_BYTES_VAR, max_input_bytes

# Sizes, attributes and seeds are int64s in numpy and torch; larger values are refused where written.
MAX_INT = 2**63 - 1
# No edbc field holds more than an int64; longer JSON integers are refused unread.
_MAX_INT_DIGITS = 19
# No edbc file nests deeper than a few levels. The parser's own limit is the interpreter's recursion
# limit, which differs between Python versions (3.12 parses 10,000 levels); this one does not.
_MAX_JSON_DEPTH = 64
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def read_input_bytes(path: str | Path, what: str, error: type[InputError] = InputError) -> bytes:
    """The bytes of the regular file `path`; `what` names it in errors ("data", "plan", "" for a file)."""
    path = str(path)
    noun = f"{what} file" if what else "file"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"no such {noun}", path=path) from None
    except ValueError:  # a NUL byte in the path
        raise error(f"the path holds a NUL byte; expected the path of a {noun}", path=path) from None
    except OSError as e:
        raise error(f"cannot read: {e.strerror}", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"is a directory; expected a {noun}", path=path)
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise error(f"is {kind}, not a regular file; expected a {noun}", path=path)
        limit = max_input_bytes()
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)  # the size may change under us: never read past the limit
    except OSError as e:
        raise error(f"cannot read: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LimitError(f"the {noun} is larger than {limit} bytes, the most edbc reads; set "
                         f"{MAX_INPUT_BYTES_VAR} to read larger files", path=path)
    return data


def read_input_text(path: str | Path, what: str, error: type[InputError] = InputError) -> str:
    """`read_input_bytes` decoded as UTF-8."""
    data = read_input_bytes(path, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from None


def out_of_memory(path: str | None, line: int | None = None) -> LimitError:
    """What a reader raises when parsing its input ran out of memory (MemoryError)."""
    what = "this line" if line is not None else "this file"
    return LimitError(f"{what} is too large to parse in the memory available; split it, or give edbc "
                      "more memory", path=path, line=line)


def load_json(data: str | bytes):
    """`json.loads`; nesting too deep and integers beyond int64 raise `JSONDecodeError` too."""
    try:
        value = json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", _text(data), 0) from None
    except _IntegerTooLong as e:
        raise json.JSONDecodeError(f"integer of {e.digits} digits, at most {_MAX_INT_DIGITS} allowed",
                                   _text(data), 0) from None
    level, depth = [value] if type(value) in (dict, list) else [], 0
    while level:  # level by level: the cost is one step per list or object, whatever the nesting
        depth += 1
        if depth > _MAX_JSON_DEPTH:
            raise json.JSONDecodeError("nested too deeply", _text(data), 0)
        level = [v for c in level for v in (c.values() if type(c) is dict else c) if type(v) in (dict, list)]
    return value


class _IntegerTooLong(Exception):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        raise _IntegerTooLong(digits)
    return int(text)


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")
