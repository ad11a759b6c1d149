"""Versioned, checksummed artifact files, written atomically and deterministically.

Layout of a file:

    <magic line>            e.g. "EDBC-PLAN\\n"
    <header length>\\n       12 ASCII digits
    <header>                JSON, sorted keys, no timestamps
    <blobs>                 raw little-endian arrays, each at a 64-byte aligned offset

The header carries the format name, the schema version "major.minor", the
sha256 of every blob and its own sha256 (over the header without that field).
A reader refuses another major version, a bad checksum and a truncated file
with an `ArtifactError`; a newer minor version loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import ArtifactError, InputError, UsageError, quoted
from .inputs import load_json, read_input_bytes

_ALIGN = 64
_LEN_DIGITS = 12


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_atomic(path: str | Path, data: bytes, inputs: Iterable[str | Path | None] = ()) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    `path` is first checked with `check_output` against `inputs`, the files the output was made from.
    Missing folders above it are made (`-o out/sst.plan` on a fresh checkout).
    """
    check_output(path, inputs)
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot make the folder {directory}: {e.strerror}", path=str(path)) from None
    _remove_stale_temporaries(directory, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name, os.getpid()), suffix=".tmp", dir=directory)
    except OSError as e:
        raise InputError(f"cannot write here: {e.strerror}", path=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        # Interrupted (SIGINT included) or failed: leave the old file and no partial one.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_output(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse (bad usage) an output path whose writing would destroy something: one of `inputs`
    (None entries are skipped), a directory, or anything else that is not a regular file (a
    FIFO or a device node would be replaced by a regular file)."""
    if str(path) == "":
        raise UsageError("the output path is empty; expected a file name")
    for source in inputs:
        if source is not None and _same_file(path, source):
            raise UsageError(f"the output is the input {source}, which writing it would overwrite; "
                             "expected another output path", path=str(path))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        _check_folders(Path(path))
        return  # nothing there (or nothing we can see): the writer reports what it cannot do
    if stat.S_ISDIR(mode):
        raise UsageError("the output is a directory; expected a file name", path=str(path))
    if not stat.S_ISREG(mode):
        raise UsageError("the output exists and is not a regular file (a device, FIFO or socket); "
                         "expected a regular file or a new name", path=str(path))


def _check_folders(path: Path) -> None:
    """The nearest existing folder above a new output must be a folder: `write_atomic` makes the
    missing ones below it, and a file in the way is said before any work."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{parent} is a file, not a folder; expected an output path inside a folder",
                                 path=str(path))
            return


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# Temporary files are named `.<target>.<pid>.<8 random chars>.tmp`: a writer killed hard (SIGKILL,
# power loss) cannot remove its own, so the next writer of the same target removes those whose
# process is gone.
_TEMP_TAIL = re.compile(r"(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp")


def _temporary_prefix(name: str, pid: int) -> str:
    return f".{name}.{pid}."


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    head = f".{name}."
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(head)]
    except OSError:
        return
    for entry in entries:
        match = _TEMP_TAIL.fullmatch(entry.name[len(head):])
        if match and entry.is_file(follow_symlinks=False) and not _process_alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
            except OSError:
                pass  # another writer removed it first, or it is not ours to remove


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (OverflowError, ValueError):
        return False  # no process can have this id
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def encode_artifact(magic: bytes, fmt: str, version: tuple[int, int], header: dict,
                    arrays: dict[str, np.ndarray]) -> bytes:
    parts = {}
    blobs = []
    offset = 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        raw = a.tobytes()
        pad = (-offset) % _ALIGN
        blobs.append(b"\0" * pad + raw)
        offset += pad
        parts[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                       "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        offset += len(raw)
    head = dict(header, format=fmt, version=f"{version[0]}.{version[1]}", parts=parts)
    head["checksum"] = hashlib.sha256(_canonical(head)).hexdigest()
    text = _canonical(head)
    return magic + f"{len(text):0{_LEN_DIGITS}d}\n".encode() + text + b"".join(blobs)


def decode_artifact(path: str, data: bytes, magic: bytes, fmt: str,
                    major: int) -> tuple[dict, dict[str, np.ndarray]]:
    def fail(message: str):
        raise ArtifactError(message, path=path)

    if not data.startswith(magic):
        fail(f"not an {fmt} file (it does not start with {magic.strip().decode()!r})")
    pos = len(magic)
    digits = data[pos:pos + _LEN_DIGITS]
    if len(digits) < _LEN_DIGITS or not digits.isdigit() or data[pos + _LEN_DIGITS:pos + _LEN_DIGITS + 1] != b"\n":
        fail("truncated or corrupt: the header length is missing")
    length = int(digits)
    start = pos + _LEN_DIGITS + 1
    if len(data) < start + length:
        fail(f"truncated: the header needs {length} bytes, {len(data) - start} are there")
    head = parse_json(data[start:start + length], fail, f"an {fmt} header")
    if not isinstance(head, dict):
        fail("corrupt: the header is not a JSON object")
    check_document(head, fmt, major, fail, "in the header")
    blobs = data[start + length:]
    parts = expect(head.get("parts", {}), dict, "the header's parts", fail)
    return head, {name: _read_part(name, part, blobs, fail) for name, part in parts.items()}


def parse_json(text: bytes, fail, expected: str):
    """JSON (`edbc.inputs.load_json`: nesting and integers bounded), or `fail`."""
    try:
        return load_json(text)
    except UnicodeDecodeError:
        fail(f"corrupt: not valid JSON (not UTF-8); expected {expected}")
    except json.JSONDecodeError as e:
        fail(f"corrupt or truncated: not valid JSON ({e.msg}); expected {expected}")


# The dtypes edbc writes: little-endian integers, floats and bytes (never objects, which numpy cannot
# make from raw bytes anyway, nor structured types).
_PART_DTYPES = ("|u1", "|i1", "|b1", "<i2", "<i4", "<i8", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8")


def _read_part(name: str, part, blobs: bytes, fail) -> np.ndarray:
    what = f"part '{quoted(name)}'"
    expect(part, dict, what, fail)
    dtype = part.get("dtype")
    if dtype not in _PART_DTYPES:
        fail(f"{what} has dtype {show(dtype)}; expected one of {', '.join(_PART_DTYPES)}")
    shape = expect_ints(part.get("shape"), f"the shape of {what}", fail)
    offset = expect_int(part.get("offset"), f"the offset of {what}", fail)
    n = expect_int(part.get("nbytes"), f"the size of {what}", fail)
    if math.prod(shape) * np.dtype(dtype).itemsize != n:
        fail(f"{what} is {n} bytes; its shape {shape} of {dtype} needs {math.prod(shape) * np.dtype(dtype).itemsize}")
    raw = blobs[offset:offset + n]
    if len(raw) != n:
        fail(f"truncated: part '{quoted(name)}' needs {n} bytes, {len(raw)} are there")
    if hashlib.sha256(raw).hexdigest() != part.get("sha256"):
        fail(f"checksum mismatch in part '{quoted(name)}': the file is corrupt")
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def check_document(doc: dict, fmt: str, major: int, fail, where: str = "") -> None:
    """Format name, schema major version and checksum of an artifact's JSON document; the
    checksum field is removed. `fail(message)` raises."""
    if doc.get("format") != fmt:
        got = doc.get("format")
        fail(f"this is an {got!r} file, not an {fmt!r} file" if isinstance(got, str) else
             f"not an {fmt!r} file: its format is {show(got)}")
    version = doc.get("version")
    try:
        got_major, _ = (int(x) for x in version.split("."))
    except (AttributeError, ValueError):  # not a string, or not "major.minor"
        fail(f"corrupt: bad schema version {show(version)}; expected \"major.minor\"")
    if got_major != major:
        fail(f"schema version {version} is not supported; this edbc reads {fmt} {major}.x")
    claimed = doc.pop("checksum", None)
    if claimed != hashlib.sha256(_canonical(doc)).hexdigest():
        fail(f"checksum mismatch{' ' + where if where else ''}: the file is corrupt")


# Checks of decoded JSON fields. A forged file is refused, never coerced: true is not 1, 1.0 is not
# 1, and "abc" is not a list of three names. `fail(message)` raises.

_KINDS = {str: "a string", list: "a list", dict: "an object", bool: "true or false", int: "an integer"}


def show(value) -> str:
    """A value as the file spells it (JSON), cut short: messages never show a Python repr."""
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = "a malformed value"
    return text if len(text) <= 40 else text[:37] + "..."


def expect(value, kind: type, what: str, fail):
    """`value` itself, if its JSON type is `kind` (exactly: a bool is not an int)."""
    if type(value) is not kind:
        fail(f"{what} is {'missing or null' if value is None else show(value)}; expected {_KINDS[kind]}")
    return value


def expect_int(value, what: str, fail, low: int | None = 0, high: int | None = None) -> int:
    """`value`, if it is an integer in [low, high] (None: unbounded)."""
    if type(value) is not int or (low is not None and value < low) or (high is not None and value > high):
        bounds = (f" from {low}" if low is not None else "") + (f" to {high}" if high is not None else "")
        fail(f"{what} is {show(value)}; expected an integer{bounds}")
    return value


def expect_ints(value, what: str, fail, low: int | None = 0, high: int | None = None) -> list[int]:
    return [expect_int(v, what, fail, low, high) for v in expect(value, list, what, fail)]


def read_bytes(path: str | Path, what: str) -> bytes:
    return read_input_bytes(path, what)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(read_bytes(path, "data")).hexdigest()
