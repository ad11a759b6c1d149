"""The policy options of run, compile and schedule, and the train-policy command."""

import json

import numpy as np
import pytest

from edbc import api
from edbc.data.typed_dag import format_typed_dag
from edbc.errors import EXIT_ARTIFACT, EXIT_INPUT, EXIT_LIMIT, EXIT_USAGE, EXIT_WORSE_POLICY, PolicyWarning
from edbc.policy import resolve
from edbc.settings import MODELS_DIR

from .conftest import TREELSTM, shared
from .dags import lattice_dag
from .test_cli import edbc, one_line_error

SHIPPED = api.shipped_policy_path("treelstm", "cell")


def test_run_defaults_to_the_shipped_fsm_and_reports_fallbacks():
    r = edbc("run", "--limit", 24, "-b", 8, "--check", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["policy"] == "fsm" and report["fsm_fallbacks"] == 0
    assert report["num_batches"] == report["lower_bound"] and report["check"] == "passed"
    assert report["policy_digest"] == api.resolve_policy("fsm", api.load_spec(TREELSTM)[0], "cell").digest
    text = edbc("run", "--limit", 8, "--policy", SHIPPED)
    assert text.exit_code == 0 and "policy fsm" in text.stdout and "FSM fallbacks      0" in text.stdout


def test_without_a_shipped_policy_run_uses_agenda(monkeypatch, tmp_path):
    monkeypatch.setattr(resolve, "PLANS_DIR", tmp_path)
    r = edbc("run", "--limit", 8, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["policy"] == "agenda"
    one_line_error(edbc("run", "--limit", 8, "--policy", "fsm"), EXIT_USAGE,
                   "no policy is shipped for model 'treelstm' at cell level")


def test_fsm_results_equal_the_reference_on_sst():
    sst = shared("sst/dev.txt")
    r = edbc("run", TREELSTM, "--data", sst, "--limit", 64, "--policy", "fsm", "--check", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["check"] == "passed" and report["num_batches"] == report["lower_bound"]


def test_compiled_plans_record_the_policy(tmp_path):
    plan = tmp_path / "p.plan"
    assert edbc("compile", TREELSTM, "--limit", 12, "-b", 6, "--policy", "fsm", "-o", plan).exit_code == 0
    r = edbc("inspect", plan)
    digest = api.resolve_policy("fsm", api.load_spec(TREELSTM)[0], "cell").digest
    assert f"policy       fsm at cell level, memory pq (policy file {digest[:12]}, 0 FSM fallbacks)" in r.stdout
    r = edbc("run", plan, "--check", "--json")
    report = json.loads(r.stdout)
    assert report["policy"] == "fsm" and report["policy_digest"] == digest and report["check"] == "passed"


def test_a_policy_of_another_model_is_refused():
    treegru = MODELS_DIR / "treegru.yaml"
    one_line_error(edbc("run", treegru, "--limit", 4, "--policy", SHIPPED), EXIT_ARTIFACT,
                   f"{SHIPPED}:", "trained for model 'treelstm', not for model 'treegru'")
    one_line_error(edbc("run", "--limit", 4, "--granularity", "op", "--policy", SHIPPED), EXIT_ARTIFACT,
                   "trained at cell level, the graphs are at op level")


def test_bad_policy_options(tmp_path):
    one_line_error(edbc("run", "--policy", "best"), EXIT_USAGE, "unknown policy 'best'", "fsm, optimal")
    one_line_error(edbc("run", "--policy", tmp_path / "none.json"), EXIT_INPUT, "no such policy file")
    bad = tmp_path / "bad.json"
    bad.write_text(SHIPPED.read_text().replace('"sorted"', '"set"'))
    one_line_error(edbc("run", "--limit", 4, "--policy", bad), EXIT_ARTIFACT, "checksum mismatch")


def test_optimal_on_small_graphs_and_refused_on_large_ones():
    r = edbc("run", "--limit", 3, "-b", 1, "--policy", "optimal", "--check", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["policy"] == "optimal" and report["num_batches"] == report["lower_bound"]
    one_line_error(edbc("run", "--limit", 64, "--policy", "optimal"), EXIT_LIMIT,
                   "policy 'optimal' handles graphs of at most 64 nodes")


def test_train_policy_on_typed_dags_then_schedule_with_it(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for i in range(3):
        files.append(tmp_path / f"g{i}.txt")
        files[-1].write_text(format_typed_dag(lattice_dag(rng, 3)))
    out = tmp_path / "dag.policy.json"
    r = edbc("train-policy", "--graphs", *files[:2], "--heldout", files[2], "--timesteps", 100, "-o", out)
    assert r.exit_code == 0, r.output
    assert "typed-dag at dag level" in r.stdout and "held-out batches" in r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert (tmp_path / "dag.policy.ckpt").exists()
    r = edbc("schedule", *files, "--policy", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["policy"] == "fsm" and len(doc["policy_digest"]) == 64
    assert all(g["num_batches"] >= g["lower_bound"] for g in doc["graphs"])
    r = edbc("schedule", files[0], "--policy", "optimal", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["graphs"][0]["num_batches"] >= 1
    one_line_error(edbc("run", "--limit", 4, "--policy", out), EXIT_ARTIFACT,
                   "trained for bare typed DAGs, not for model 'treelstm'")
    one_line_error(edbc("schedule", files[0], "--policy", SHIPPED), EXIT_ARTIFACT,
                   "trained for model 'treelstm', not for bare typed DAGs")
    one_line_error(edbc("schedule", files[0], "--policy", "fsm"), EXIT_USAGE, "bare typed DAGs have no shipped policy")


def test_train_policy_for_a_model_and_resume(tmp_path):
    out = tmp_path / "t.policy.json"
    args = ["train-policy", TREELSTM, "--limit", 60, "-b", 8, "--timesteps", 100, "-o", out]
    r = edbc(*args)
    assert r.exit_code == 0, r.output
    first = json.loads(out.read_text())
    assert first["model"]["name"] == "treelstm" and first["granularity"] == "cell"
    assert first["training"]["data"]["heldout"] == "synthetic"
    r = edbc(*args[:-4], "--timesteps", 5000, "--resume", "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["training"]["timesteps_trained"] >= first["training"]["timesteps_trained"]
    one_line_error(edbc(*args[:-4], "--encoding", "max", "--resume", "-o", out), EXIT_ARTIFACT,
                   "belongs to another training run")
    one_line_error(edbc("train-policy", TREELSTM, TREELSTM, "-o", out), EXIT_USAGE, "give one model")
    one_line_error(edbc("train-policy", "--graphs", "-o", out), EXIT_USAGE, "at least one typed DAG file")


# In the state "t1 has more ready nodes than t2" running t1 first is right on TRAIN (t2's second node
# waits for a t1) and wrong on HELD (a t1 node waits for t2): whatever is learnt on TRAIN batches
# HELD worse than typewise and agenda, which look at more than the state.
TRAIN = "4\n1 0\n1 0\n2 0\n2 1 0\n"
HELD = "4\n1 0\n1 0\n2 0\n1 1 2\n"


def test_a_policy_worse_than_the_best_heuristic_is_refused_unless_allowed(tmp_path):
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text(TRAIN)
    held.write_text(HELD)
    out = tmp_path / "p.policy.json"
    args = ["train-policy", "--graphs", train, "--heldout", held, "--timesteps", 1, "-o", out]
    one_line_error(edbc(*args), EXIT_WORSE_POLICY, "needs 3 batches on the 1 held-out graphs, more than agenda's 2",
                   "--allow-worse")
    assert not out.exists()
    r = edbc(*args, "--allow-worse")
    assert r.exit_code == 0, r.output
    figures = json.loads(out.read_text())["figures"]["heldout"]
    assert figures["baselines"] == {"depth": 3, "agenda": 2, "typewise": 2}
    assert figures["best_heuristic"] == "agenda" and figures["fewer_than_best_heuristic"] == -1
    # Without --heldout the training graphs score it, and the report says so.
    r = edbc("train-policy", "--graphs", train, "--timesteps", 1, "-o", out)
    assert r.exit_code == 0 and "training batches" in r.stdout and "held-out" not in r.stdout, r.output
    assert json.loads(out.read_text())["figures"]["heldout"]["held_out"] is False


def _edited_treelstm(tmp_path, name="mine.yaml"):
    """A copy of the bundled TreeLSTM with hidden 64, keeping its model name."""
    spec = tmp_path / name
    text = TREELSTM.read_text()
    assert "hidden: 128" in text
    spec.write_text(text.replace("hidden: 128", "hidden: 64"))
    return spec


def test_an_edited_spec_warns_once_and_batches_with_typewise(tmp_path):
    spec = _edited_treelstm(tmp_path)
    r = edbc("run", spec, "--limit", 24, "-b", 8, "--check", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["policy"] == "typewise" and report["check"] == "passed" and "policy_digest" not in report
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Warning: ") and f"{SHIPPED}:" in lines[0], r.stderr
    assert "another version of model 'treelstm'" in lines[0] and "typewise" in lines[0]
    assert str(tmp_path / "mine.policy.json") in lines[0]
    # Asked for by name or path, the policy that does not fit is refused, as before.
    one_line_error(edbc("run", spec, "--limit", 4, "--policy", "fsm"), EXIT_ARTIFACT, "another version of model")
    one_line_error(edbc("run", spec, "--limit", 4, "--policy", SHIPPED), EXIT_ARTIFACT, "another version of model")


def test_an_edited_spec_warns_from_the_api(tmp_path):
    spec = api.load_spec(_edited_treelstm(tmp_path))[0]
    with pytest.warns(PolicyWarning, match="another version of model 'treelstm'"):
        assert resolve.resolve_policy(None, spec, "cell").name == "typewise"


def test_a_policy_beside_the_spec_is_its_default(tmp_path, monkeypatch):
    spec = tmp_path / "mine.yaml"
    spec.write_text(TREELSTM.read_text())
    (tmp_path / "mine.policy.json").write_bytes(SHIPPED.read_bytes())
    (tmp_path / "mine.op.policy.json").write_bytes(api.shipped_policy_path("treelstm", "op").read_bytes())
    monkeypatch.setattr(resolve, "PLANS_DIR", tmp_path / "none")  # nothing shipped: only the files beside
    for level in ("cell", "op"):
        r = edbc("run", spec, "--limit", 16, "-b", 8, "--granularity", level, "--check", "--json")
        assert r.exit_code == 0 and r.stderr == "", r.output
        report = json.loads(r.stdout)
        own = api.resolve_policy(str(resolve.spec_policy_path(str(spec), level)), api.load_spec(spec)[0], level)
        assert report["policy"] == "fsm" and report["policy_digest"] == own.digest and report["check"] == "passed"
    assert json.loads(edbc("run", spec, "--limit", 4, "--policy", "fsm", "--json").stdout)["policy"] == "fsm"
    # With neither beside the spec nor shipped: agenda.
    (tmp_path / "mine.policy.json").unlink()
    assert json.loads(edbc("run", spec, "--limit", 4, "--json").stdout)["policy"] == "agenda"
