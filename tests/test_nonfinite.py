"""NaN or infinite results never pass --check, and run says so even without it."""

import json

import pytest

from edbc.errors import EXIT_VERIFY

from .conftest import TREELSTM
from .test_cli import edbc, one_line_error


@pytest.fixture(params=[".nan", ".inf"])
def broken_spec(request, tmp_path):
    path = tmp_path / "model.yaml"
    text = TREELSTM.read_text()
    path.write_text(text.replace("init: normal, std: 0.1", f"init: normal, std: {request.param}", 1))
    assert path.read_text() != text
    return path


def test_check_fails_on_nonfinite_outputs_and_json_stays_valid(broken_spec):
    r = edbc("run", broken_spec, "--limit", 6, "-b", 3, "--policy", "agenda", "--check", "--json")
    one_line_error(r, EXIT_VERIFY, "Error: outputs are not finite: ", " values are NaN or infinite",
                   "expected finite results")
    report = json.loads(r.stdout)
    assert report["check"] == "failed" and report["nonfinite_outputs"] > 0
    assert report["nonfinite_reference"] > 0


def test_check_fails_on_a_nonfinite_plan_too(broken_spec, tmp_path):
    plan = tmp_path / "p.plan"
    assert edbc("compile", broken_spec, "--limit", 6, "-b", 3, "--policy", "agenda", "-o", plan).exit_code == 0
    one_line_error(edbc("run", plan, "--check"), EXIT_VERIFY, "outputs are not finite")


def test_run_warns_without_check(broken_spec):
    r = edbc("run", broken_spec, "--limit", 6, "-b", 3, "--policy", "agenda", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["nonfinite_outputs"] > 0 and "check" not in report
    assert r.stderr.startswith("Warning: outputs are not finite: ") and len(r.stderr.splitlines()) == 1


def test_finite_results_pass_and_warn_nothing():
    r = edbc("run", TREELSTM, "--limit", 6, "-b", 3, "--policy", "agenda", "--check", "--json")
    assert r.exit_code == 0 and r.stderr == ""
    report = json.loads(r.stdout)
    assert report["check"] == "passed" and report["nonfinite_outputs"] == 0 and report["nonfinite_reference"] == 0
