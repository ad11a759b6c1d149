import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edbc.cli import main
from edbc.errors import EXIT_ARTIFACT, EXIT_INPUT, EXIT_USAGE
from edbc.schedule import POLICIES

from .conftest import TREELSTM, shared
from edbc.settings import MODELS_DIR as MODELS, REPO_ROOT


def edbc(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for f in fragments:
        assert f in lines[0]
    assert "Traceback" not in result.output


def test_run_default_model_json():
    r = edbc("run", "--limit", 10, "--batch-size", 4, "--json", "--check")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    for key in ("model", "policy", "batch_size", "num_instances", "num_batches", "lower_bound",
                "max_abs_error", "ms_per_minibatch"):
        assert key in report
    assert report["model"] == "treelstm" and report["num_instances"] == 10 and report["batch_size"] == 4
    assert report["max_abs_error"] <= 1e-4 and report["num_batches"] >= report["lower_bound"]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_run_on_sst_every_policy(policy):
    sst = shared("sst/dev.txt")
    r = edbc("run", TREELSTM, "--data", sst, "--limit", 64, "--batch-size", 64, "--policy", policy,
             "--check", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["max_abs_error"] <= 1e-4 and report["num_batches"] >= report["lower_bound"]


def test_compile_inspect_and_run_plan(tmp_path):
    plan = tmp_path / "p.plan"
    r = edbc("compile", TREELSTM, "--limit", 12, "-b", 6, "--policy", "depth", "--granularity", "op", "-o", plan)
    assert r.exit_code == 0, r.output
    r = edbc("inspect", plan)
    assert r.exit_code == 0 and "depth at op level" in r.stdout and "lower bound" in r.stdout
    for dump in ("graph", "schedule", "layout", "cells"):
        assert edbc("inspect", plan, "--dump", dump).exit_code == 0
    r = edbc("run", plan, "--check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["num_instances"] == 12
    one_line_error(edbc("run", plan, "--policy", "agenda"), EXIT_USAGE, "fixed when the plan was compiled")


def test_memory_modes_on_run_and_inspect(tmp_path):
    reports = {}
    for memory in ("pq", "none"):
        r = edbc("run", "--limit", 32, "-b", 16, "--granularity", "op", "--memory", memory, "--check", "--json")
        assert r.exit_code == 0, r.output
        reports[memory] = json.loads(r.stdout)
        assert reports[memory]["memory"] == memory and reports[memory]["check"] == "passed"
    # a mini-batch run once: planning would cost more than the gathers it could save, so pq leaves it be
    assert reports["pq"]["planned_minibatches"] == 0 and reports["none"]["planned_minibatches"] == 0
    assert reports["pq"]["gather_bytes"] == reports["none"]["gather_bytes"]
    plan = tmp_path / "p.plan"
    assert edbc("compile", TREELSTM, "--limit", 8, "-b", 4, "-o", plan).exit_code == 0  # pq by default
    r = edbc("inspect", plan)
    assert r.exit_code == 0 and "memory pq" in r.stdout and "pq (compiled) vs none" in r.stdout
    gathers = re.search(r"gather bytes\s+([\d.]+) MiB vs ([\d.]+) MiB", r.stdout).groups()
    assert float(gathers[0]) < float(gathers[1])  # a plan is planned: it may run any number of times
    assert "operand bytes served as views" in r.stdout and "inside cell kernels" in r.stdout
    one_line_error(edbc("run", "--memory", "best"), EXIT_USAGE, "unknown memory mode 'best'", "pq, none")


def test_schedule_command_on_typed_dags(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("3\n1 0\n1 0\n2 2 0 1\n")
    b = tmp_path / "b.txt"
    b.write_text("2\n0 0\n1 1 0\n")
    r = edbc("schedule", a, b, "--policy", "typewise", "--json")
    assert r.exit_code == 0
    graphs = json.loads(r.stdout)["graphs"]
    assert [(g["num_nodes"], g["num_batches"], g["lower_bound"]) for g in graphs] == [(3, 2, 2), (2, 2, 2)]


def test_readme_schedule_commands_run_on_the_shipped_examples(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    commands = [shlex.split(line.split("#")[0])[1:] for line in (REPO_ROOT / "README.md").read_text().splitlines()
                if line.startswith(".venv/bin/edbc schedule ")]
    assert len(commands) == 2
    for args in commands:
        r = edbc(*args)
        assert r.exit_code == 0, r.output
    doc = json.loads(edbc(*commands[0]).stdout)
    got = {g["file"]: (g["num_nodes"], g["num_batches"], g["lower_bound"]) for g in doc["graphs"]}
    assert got == {"examples/tree.txt": (10, 5, 5), "examples/bilstm.txt": (16, 10, 10)}
    depth = json.loads(edbc("schedule", "examples/bilstm.txt", "--policy", "depth", "--json").stdout)
    assert depth["graphs"][0]["num_batches"] == 11  # as the README says


def test_malformed_tree_line(tmp_path):
    f = tmp_path / "trees.txt"
    f.write_text("(1 (2 a) (2 b))\n(1 (2 a) (2 b)\n")
    one_line_error(edbc("run", TREELSTM, "--data", f), EXIT_INPUT, f"{f}:2:1:", "unbalanced")


def test_unknown_op_in_spec(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(TREELSTM.read_text().replace("h = mul(sigmoid(o), tanh(c))", "h = mul(sigmoid(o), tnah(c))", 1))
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{spec}:", "cell 'leaf'", "unknown op 'tnah'")


def test_missing_files(tmp_path):
    one_line_error(edbc("run", tmp_path / "none.yaml"), EXIT_INPUT, "no such model spec file")
    one_line_error(edbc("run", "--data", tmp_path / "none.txt"), EXIT_INPUT, "no such data file")
    one_line_error(edbc("schedule", tmp_path / "g.txt"), EXIT_INPUT, "no such graph file")
    one_line_error(edbc("inspect", tmp_path / "p.plan"), EXIT_INPUT, "no such plan file")


def test_usage_errors():
    one_line_error(edbc("run", "--policy", "best"), EXIT_USAGE, "unknown policy 'best'")
    one_line_error(edbc("run", "--frobnicate"), EXIT_USAGE, "No such option")
    one_line_error(edbc("run", "--batch-size", 0), EXIT_USAGE, "--batch-size must be at least 1")
    one_line_error(edbc("run", "--device", "tpu"), EXIT_USAGE, "unknown device")


def test_corrupt_plan(tmp_path):
    f = tmp_path / "p.plan"
    f.write_bytes(b"EDBC-PLAN\n000000000099\n{")
    one_line_error(edbc("run", f), EXIT_ARTIFACT, "truncated")


@pytest.mark.skipif(shutil.which("edbc") is None
                    and not (sys.prefix and shutil.which("edbc", path=sys.prefix + "/bin")),
                    reason="console script not installed")
def test_console_script_prints_one_json_object_and_no_traceback(tmp_path):
    exe = shutil.which("edbc", path=sys.prefix + "/bin") or shutil.which("edbc")
    r = subprocess.run([exe, "run", "--limit", "3", "--json"], capture_output=True, text=True)
    assert r.returncode == 0
    assert isinstance(json.loads(r.stdout), dict)
    bad = tmp_path / "bad.txt"
    bad.write_text("(1 (2 a)\n")
    r = subprocess.run([exe, "run", "--data", str(bad)], capture_output=True, text=True)
    assert r.returncode == EXIT_INPUT and "Traceback" not in r.stderr and r.stderr.startswith("Error: ")


def test_help_and_usage_errors_do_not_import_torch():
    # Importing torch and the compiler takes seconds; `edbc --help`, each command's help and a usage
    # error answer without them (the commands import them when they run).
    script = """
import sys
from edbc.cli import main
for args in [["--help"], *([name, "--help"] for name in main.commands), ["run", "--no-such-option"]]:
    try:
        main(args)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "edbc.api", "edbc.distributed") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_work_larger_than_memory_is_refused_with_the_estimate(monkeypatch):
    # The TreeLSTM's parameters take 0.94 MiB; a mini-batch of 8 trees about 1.4 MiB more.
    monkeypatch.setenv("EDBC_MEMORY_LIMIT", str(1_500_000))
    one_line_error(edbc("run", "--limit", 8), 6, "mini-batch 0 needs", "MiB of tensor memory (parameters",
                   "arenas", "workspace", "smaller --batch-size")


def test_parameters_larger_than_memory_are_refused_before_they_are_drawn(monkeypatch):
    monkeypatch.setenv("EDBC_MEMORY_LIMIT", str(100_000))
    one_line_error(edbc("run", "--limit", 8), 6, "model 'treelstm' needs 966.5 KiB of tensor memory",
                   "use smaller dims")


def test_sigterm_leaves_the_previous_plan_and_no_partial_file(tmp_path):
    import signal
    import time
    exe = shutil.which("edbc", path=sys.prefix + "/bin") or shutil.which("edbc")
    if exe is None:
        pytest.skip("console script not installed")
    out = tmp_path / "out.plan"
    out.write_bytes(b"previous plan")
    # Op-level typewise over many lattices takes a good while: the signal lands mid-compile.
    proc = subprocess.Popen([exe, "compile", str(MODELS / "lattice_lstm.yaml"), "--limit", "3000",
                             "--granularity", "op", "--policy", "typewise", "-o", str(out)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "Error: interrupted"
    assert out.read_bytes() == b"previous plan"
    assert [p.name for p in tmp_path.iterdir()] == ["out.plan"]


def test_sigint_during_train_policy_keeps_the_previous_policy(tmp_path):
    import signal
    import time
    exe = shutil.which("edbc", path=sys.prefix + "/bin") or shutil.which("edbc")
    if exe is None:
        pytest.skip("console script not installed")
    out = tmp_path / "p.policy.json"
    out.write_text("previous policy")
    # A shell that starts jobs in the background (`make test &`) hands them SIGINT ignored;
    # the child gets it back, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen([exe, "train-policy", str(MODELS / "lattice_lstm.yaml"), "--limit", "256",
                             "--timesteps", "10000000", "-o", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "Error: interrupted"
    assert out.read_text() == "previous policy"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bench_out_naming_a_file_is_bad_usage(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    r = edbc("bench", "--out", target, "--models", "treelstm", "--batch-sizes", "1", "--no-dynet")
    one_line_error(r, EXIT_USAGE, "--out", "not a directory")
    assert target.read_text() == "keep me\n"
