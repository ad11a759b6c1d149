"""The native core (C++, `csrc/`): loaded once from its build by `make setup`.

`core()` returns the extension module. It refuses, with one line naming the
fix, a missing build or one made from other sources than the checkout's.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))
BUILD_DIR = Path(__file__).resolve().parent / "_build"
MODULE_NAME = "edbc_native"
STAMP = BUILD_DIR / "sources.sha256"
# The build runs on the machine that runs it (make setup), so it may use all its vector units.
# Without traps or errno (neither of which edbc reads), loops calling floor vectorise; NaN and inf
# keep their IEEE semantics (no -ffast-math). NDEBUG: pybind11 otherwise checks the GIL on every
# reference count change, ~10 % of a call that reads a mini-batch's instances.
CFLAGS = ("-O3", "-march=native", "-std=c++17", "-fno-trapping-math", "-fno-math-errno", "-DNDEBUG")


def source_digest() -> str:
    h = hashlib.sha256(" ".join(CFLAGS).encode() + b"\0")
    for path in sorted(CSRC.glob("*.[ch]pp")) + sorted(CSRC.glob("*.h")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def core():
    """The extension module."""
    import importlib.util

    import torch  # noqa: F401  (the extension links against torch's libraries)

    from ..errors import NativeError

    built = sorted(BUILD_DIR.glob(f"{MODULE_NAME}*.so"))
    if not built or not STAMP.exists():
        raise NativeError("the native core is not built: run `make setup` (it needs g++)")
    if STAMP.read_text().strip() != source_digest():
        raise NativeError("the native core was built from other sources than csrc/ holds now: run `make setup`")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
