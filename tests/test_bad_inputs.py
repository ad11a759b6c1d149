"""The corpus of malformed inputs (tests/bad_inputs/cases.yaml): every one is answered with one
line `Error: <where>: <what>`, its documented exit code, and no traceback."""

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
            "policies"} <= folders
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
