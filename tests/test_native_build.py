"""The native core's build: refused without a compiler, and a build from other sources is refused
at load (exit 10), with the fix in one line."""

import pytest

from edbc import native
from edbc.errors import EXIT_NATIVE, NativeError
from edbc.native import build


def test_no_compiler_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(NativeError, match="no C[+][+] compiler found .* install g[+][+]") as e:
        build.build()
    assert e.value.exit_code == EXIT_NATIVE


def test_a_stale_build_is_refused(monkeypatch, tmp_path):
    stamp = tmp_path / "sources.sha256"
    stamp.write_text("0" * 64 + "\n")
    for so in native.BUILD_DIR.glob(f"{native.MODULE_NAME}*.so"):
        (tmp_path / so.name).write_bytes(b"")
    monkeypatch.setattr(native, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(native, "STAMP", stamp)
    native.core.cache_clear()
    try:
        with pytest.raises(NativeError, match="built from other sources .* run `make setup`"):
            native.core()
        stamp.unlink()
        with pytest.raises(NativeError, match="not built: run `make setup`"):
            native.core()
    finally:
        native.core.cache_clear()


def test_the_build_in_place_is_current():
    """What `make setup` built is what csrc/ holds (the loader would refuse it otherwise)."""
    assert native.STAMP.read_text().strip() == native.source_digest()
    assert native.core() is not None
