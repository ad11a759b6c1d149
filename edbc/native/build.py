"""Build the native core: `python -m edbc.native.build` (what `make setup` runs).

The sources under `csrc/` compile into one torch extension in `edbc/native/_build/`,
stamped with the digest of the sources it was built from, so that `edbc.native`
refuses a stale build instead of running old code.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from . import BUILD_DIR, CFLAGS, MODULE_NAME, SOURCES, STAMP, source_digest


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def build(verbose: bool = False) -> float:
    """Compile the extension; returns the seconds it took. Raises `NativeError` without a compiler."""
    from ..errors import NativeError

    if find_compiler() is None:
        raise NativeError("no C++ compiler found (looked for $CXX, c++, g++, clang++); install g++ "
                          "(Debian: apt install g++) and run `make setup` again")
    from torch.utils import cpp_extension

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    STAMP.unlink(missing_ok=True)  # a failed build leaves no stamp
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    start = time.perf_counter()
    cpp_extension.load(
        name=MODULE_NAME, sources=[str(s) for s in SOURCES], build_directory=str(BUILD_DIR),
        extra_cflags=list(CFLAGS), verbose=verbose)
    STAMP.write_text(source_digest() + "\n")
    return time.perf_counter() - start


def main() -> int:
    from ..errors import EdbcError

    try:
        seconds = build(verbose="-v" in sys.argv)
    except EdbcError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"native core built in {seconds:.1f} s: {BUILD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
