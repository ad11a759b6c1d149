"""The corpus of malformed inputs (tests/bad_inputs/cases.yaml): every one is answered with one
line `Error: <where>: <what>`, its documented exit code, and no traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edbc.cli import main
from edbc.settings import MODELS_DIR

HERE = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((HERE / "cases.yaml").read_text())


def test_the_corpus_is_large_and_covers_every_reader():
    assert len(CASES) >= 50
    folders = {c["file"].split("/")[0] for c in CASES}
    assert {"specs", "trees", "lattices", "sequences", "pairs", "dags", "typed", "onnx", "plans",
            "policies", "checkpoints", "state_dicts", "mappings"} <= folders
    assert all((HERE / c["file"]).exists() for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_bad_input(case):
    path = HERE / case["file"]

    def fill(text: str) -> str:
        return text.replace("{file}", str(path)).replace("{dir}", str(HERE)).replace("{models}", str(MODELS_DIR))

    result = CliRunner().invoke(main, [fill(a) for a in case["args"]])
    assert result.exit_code == case["exit"], result.output
    assert isinstance(result.exception, (SystemExit, type(None)))
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {fill(case['where'])}: "), lines[0]
    assert case["message"] in lines[0]
    assert "Traceback" not in result.output


HOSTILE = yaml.safe_load((HERE / "cases_hostile.yaml").read_text())


def test_the_hostile_corpus_covers_every_class():
    assert len(HOSTILE) >= 40
    text = (HERE / "cases_hostile.yaml").read_text()
    for what in ("alias_bomb", "deep_", "huge_int", "zero_division", "nul_", "dims_1e", "huge_type", "fifo:",
                 "/dev/zero", "EDBC_MEMORY_LIMIT", "--seed", "EDBC_MAX_INPUT_BYTES", "no_matplotlib"):
        assert what in text, what


@pytest.mark.parametrize("case", HOSTILE, ids=[f"{i}-{Path(c['file']).name}" for i, c in enumerate(HOSTILE)])
def test_hostile_input(case, tmp_path):
    """In a child process with a timeout, so that a hang fails the case instead of blocking the suite."""
    path = HERE / case["file"]
    if case.get("copy"):
        path = Path(shutil.copy(path, tmp_path))
    if "fifo" in case:
        os.mkfifo(tmp_path / case["fifo"])

    def fill(text: str) -> str:
        return (text.replace("{file}", str(path)).replace("{dir}", str(HERE)).replace("{tmp}", str(tmp_path))
                .replace("{models}", str(MODELS_DIR)))

    env = dict(os.environ, **{k: fill(v) for k, v in case.get("env", {}).items()})
    result = subprocess.run([sys.executable, "-m", "edbc", *map(fill, case["args"])], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == case["exit"], result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    where = fill(case["where"])
    assert lines[0].startswith(f"Error: {where}: " if where else "Error: "), lines[0]
    assert case["message"] in lines[0]
