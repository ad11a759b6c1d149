"""Outputs never destroy inputs or special files, and a writer killed hard leaves nothing behind
once the next write of the same target has run."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from edbc import artifact
from edbc.errors import EXIT_USAGE, UsageError

from .conftest import TREELSTM
from .test_cli import edbc, one_line_error

COMPILE = ["compile", TREELSTM, "--limit", 4, "-b", 4, "--policy", "depth"]


@pytest.fixture
def spec_copy(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(TREELSTM.read_bytes())
    return path


def test_compile_refuses_to_overwrite_its_spec(spec_copy):
    before = spec_copy.read_bytes()
    one_line_error(edbc("compile", spec_copy, "--limit", 4, "-o", spec_copy), EXIT_USAGE,
                   f"Error: {spec_copy}: the output is the input {spec_copy}")
    assert spec_copy.read_bytes() == before


def test_compile_refuses_to_overwrite_its_data_or_policy(tmp_path):
    data = tmp_path / "trees.txt"
    data.write_text("(1 (2 a) (3 b))\n")
    one_line_error(edbc(*COMPILE, "--data", data, "-o", data), EXIT_USAGE, "the output is the input")
    assert data.read_text() == "(1 (2 a) (3 b))\n"
    policy = tmp_path / "p.policy.json"
    policy.write_bytes((TREELSTM.parent.parent.parent / "plans" / "treelstm.policy.json").read_bytes())
    one_line_error(edbc("compile", TREELSTM, "--limit", 4, "--policy", policy, "-o", policy), EXIT_USAGE,
                   "the output is the input")


def test_an_output_reached_through_a_link_is_still_the_input(spec_copy, tmp_path):
    link = tmp_path / "link.plan"
    link.symlink_to(spec_copy)
    one_line_error(edbc("compile", spec_copy, "--limit", 4, "-o", link), EXIT_USAGE, "the output is the input")
    assert link.is_symlink()


def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(edbc(*COMPILE, "-o", fifo), EXIT_USAGE,
                   f"Error: {fifo}: the output exists and is not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    one_line_error(edbc(*COMPILE, "-o", "/dev/null"), EXIT_USAGE, "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    one_line_error(edbc(*COMPILE, "-o", tmp_path), EXIT_USAGE, "the output is a directory")
    one_line_error(edbc(*COMPILE, "-o", ""), EXIT_USAGE, "Error: the output path is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_train_policy_refuses_outputs_that_overwrite_inputs_before_training(spec_copy, tmp_path):
    args = ["train-policy", spec_copy, "--limit", 20, "-b", 4, "--timesteps", 10]
    one_line_error(edbc(*args, "-o", spec_copy), EXIT_USAGE, "the output is the input")
    out = tmp_path / "p.policy.json"
    one_line_error(edbc(*args, "--checkpoint", spec_copy, "-o", out), EXIT_USAGE,
                   f"Error: {spec_copy}: the output is the input")
    one_line_error(edbc(*args, "--checkpoint", out, "-o", out), EXIT_USAGE, "the output is the input")
    one_line_error(edbc("train-policy", "--graphs", spec_copy, "-o", spec_copy), EXIT_USAGE, "the output is the input")
    assert spec_copy.read_bytes() == TREELSTM.read_bytes() and not out.exists()


def test_the_atomic_writer_checks_its_inputs(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("keep")
    with pytest.raises(UsageError, match="the output is the input"):
        artifact.write_atomic(source, b"lost", inputs=[None, source])
    assert source.read_text() == "keep"
    artifact.write_atomic(tmp_path / "out.txt", b"new", inputs=[source, tmp_path / "missing"])
    assert (tmp_path / "out.txt").read_bytes() == b"new"


def test_outputs_go_into_new_folders_and_never_under_a_file(tmp_path):
    plan = tmp_path / "out" / "deeper" / "sst.plan"
    r = edbc(*COMPILE, "-o", plan)
    assert r.exit_code == 0, r.output
    assert edbc("run", plan, "--json").exit_code == 0
    preds = tmp_path / "preds" / "out.jsonl"
    assert edbc("run", "--limit", 3, "--output", preds).exit_code == 0 and len(preds.read_text().splitlines()) == 3
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    one_line_error(edbc(*COMPILE, "-o", blocker / "sub" / "p.plan"), EXIT_USAGE,
                   f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "keep"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_the_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    target = tmp_path / "out.plan"
    stale = tmp_path / f".out.plan.{_dead_pid()}.abcdefgh.tmp"
    live = tmp_path / f".out.plan.{os.getppid()}.abcdefgh.tmp"
    others = [tmp_path / f".other.plan.{_dead_pid()}.abcdefgh.tmp", tmp_path / ".out.plan.abcdefgh.tmp",
              tmp_path / f".out.plan.1.{_dead_pid()}.abcdefgh.tmp", tmp_path / "out.plan.bak"]
    for p in [stale, live, *others]:
        p.write_bytes(b"partial")
    artifact.write_atomic(target, b"plan")
    assert not stale.exists()
    assert live.exists() and all(p.exists() for p in others)
    assert target.read_bytes() == b"plan"


def test_a_compile_killed_mid_write_leaves_nothing_after_the_next_one(tmp_path):
    target = tmp_path / "x.plan"
    # A writer that dies by SIGKILL after its temporary file is written and before the rename.
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from edbc import artifact
        artifact.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        artifact.write_atomic({str(target)!r}, b"x" * (1 << 20))
        """)])
    assert killed.returncode == -signal.SIGKILL
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1 and not target.exists()
    r = edbc(*COMPILE, "-o", target)
    assert r.exit_code == 0, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["x.plan"]
