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
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ArtifactError, InputError, quoted
from .inputs import load_json, read_input_bytes

_ALIGN = 64
_LEN_DIGITS = 12


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
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
    try:
        head = load_json(data[start:start + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail("corrupt: the header is not valid JSON")
    if not isinstance(head, dict):
        fail("corrupt: the header is not a JSON object")
    check_document(head, fmt, major, fail, "in the header")
    blobs = data[start + length:]
    parts = head.get("parts", {})
    if not isinstance(parts, dict):
        fail("corrupt: the header's parts are not a JSON object")
    arrays = {}
    for name, p in parts.items():
        try:
            lo, n = int(p["offset"]), int(p["nbytes"])
            raw = blobs[lo:lo + n]
            if len(raw) != n:
                fail(f"truncated: part '{quoted(name)}' needs {n} bytes, {len(raw)} are there")
            if hashlib.sha256(raw).hexdigest() != p["sha256"]:
                fail(f"checksum mismatch in part '{quoted(name)}': the file is corrupt")
            arrays[name] = np.frombuffer(raw, dtype=np.dtype(p["dtype"])).reshape(p["shape"])
        except (KeyError, TypeError, ValueError, OverflowError):  # a checksummed but ill-formed header
            fail(f"corrupt: part '{quoted(name)}' is malformed")
    return head, arrays


def check_document(doc: dict, fmt: str, major: int, fail, where: str = "") -> None:
    """Format name, schema major version and checksum of an artifact's JSON document; the
    checksum field is removed. `fail(message)` raises."""
    if doc.get("format") != fmt:
        fail(f"this is an {doc.get('format')!r} file, not an {fmt!r} file")
    version = str(doc.get("version", ""))
    try:
        got_major, _ = (int(x) for x in version.split("."))
    except ValueError:
        fail(f"corrupt: bad schema version {version!r}")
    if got_major != major:
        fail(f"schema version {version} is not supported; this edbc reads {fmt} {major}.x")
    claimed = doc.pop("checksum", None)
    if claimed != hashlib.sha256(_canonical(doc)).hexdigest():
        fail(f"checksum mismatch{' ' + where if where else ''}: the file is corrupt")


def read_bytes(path: str | Path, what: str) -> bytes:
    return read_input_bytes(path, what)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(read_bytes(path, "data")).hexdigest()
