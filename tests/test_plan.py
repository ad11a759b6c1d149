import pytest
import torch

from edbc import artifact
from edbc.api import CompileOptions, compile_plan, load_data, load_spec, run_plan
from edbc.errors import ArtifactError
from edbc.plan import format_plan, load_plan, save_plan, verify_plan
from edbc.plan.plan import MAGIC
from edbc.runtime import Runtime

from .conftest import TREELSTM
from .forge import rewrite_header


@pytest.fixture(scope="module")
def plan():
    spec, text = load_spec(TREELSTM)
    data = load_data(spec, None, limit=20, seed=2)
    return compile_plan(spec, text, data, batch_size=8, options=CompileOptions("typewise", "op"))


def test_plan_roundtrip_runs_equal_to_the_reference(plan, tmp_path):
    path = tmp_path / "p.plan"
    save_plan(plan, path)
    loaded = load_plan(path)
    verify_plan(loaded)
    assert loaded.spec.digest == plan.spec.digest
    assert [b.schedule.num_batches for b in loaded.batches] == [b.schedule.num_batches for b in plan.batches]
    report = run_plan(loaded, check=True)
    assert report.num_instances == 20 and report.check_passed
    rt = Runtime(plan.spec)
    a = rt.prepare(plan.batches[0]).run()
    b = rt.prepare(loaded.batches[0]).run()
    assert torch.equal(a, b)
    assert "batches" in format_plan(loaded) and "lower bound" in format_plan(loaded)


def test_plans_are_byte_identical_for_equal_inputs(plan, tmp_path):
    spec, text = load_spec(TREELSTM)
    again = compile_plan(spec, text, load_data(spec, None, limit=20, seed=2), batch_size=8,
                         options=CompileOptions("typewise", "op"))
    save_plan(plan, tmp_path / "a.plan")
    save_plan(again, tmp_path / "b.plan")
    assert (tmp_path / "a.plan").read_bytes() == (tmp_path / "b.plan").read_bytes()


def _rewrite_header(data: bytes, change) -> bytes:
    return rewrite_header(data, MAGIC, change)


def test_corrupt_truncated_and_foreign_versions_are_refused(plan, tmp_path):
    path = tmp_path / "p.plan"
    save_plan(plan, path)
    data = path.read_bytes()
    bad = tmp_path / "bad.plan"

    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="checksum mismatch in part"):
        load_plan(bad)
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_plan(bad)
    bad.write_bytes(data.replace(b'"policy":"typewise"', b'"policy":"typewisE"', 1))
    with pytest.raises(ArtifactError, match="checksum mismatch in the header"):
        load_plan(bad)
    bad.write_bytes(_rewrite_header(data, lambda h: h.update(version="2.0")))
    with pytest.raises(ArtifactError, match="schema version 2.0 is not supported"):
        load_plan(bad)
    bad.write_bytes(b"not a plan")
    with pytest.raises(ArtifactError, match="not an edbc"):
        load_plan(bad)
    bad.write_bytes(_rewrite_header(data, lambda h: h["inputs"].update(spec="0" * 64)))
    with pytest.raises(ArtifactError, match="does not match the spec"):
        load_plan(bad)


def test_newer_minor_version_loads(plan, tmp_path):
    path = tmp_path / "p.plan"
    save_plan(plan, path)
    path.write_bytes(_rewrite_header(path.read_bytes(), lambda h: h.update(version="1.9", extra="x")))
    assert load_plan(path).num_instances == 20


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    artifact.write_atomic(path, b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        artifact.write_atomic(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_committed_version_1_plan_keeps_loading():
    """tests/fixtures/treelstm-v1.plan was written by edbc 0.1.0 (plan schema 1.1): every later
    1.x reader must load, verify and run it."""
    from pathlib import Path
    path = Path(__file__).parent / "fixtures" / "treelstm-v1.plan"
    plan = load_plan(path)
    verify_plan(plan)
    assert plan.spec.name == "treelstm" and plan.num_instances == 6 and len(plan.batches) == 2
    report = run_plan(plan, check=True)
    assert report.check_passed


def _forge_cells(head, what: str) -> None:
    cells = head["cells"]
    if what == "op twice":
        steps = cells[0]["steps"]
        steps.append(list(steps[-1]))
    elif what == "op missing":
        cells[0]["steps"].pop()
    elif what == "shape broken":
        cells[0]["program"]["values"][-1][1] = [3]
    elif what == "wrong source":
        head["minibatches"][0]["cells"] = head["minibatches"][0]["cells"][::-1]
    elif what == "negative index":
        head["minibatches"][0]["cells"][0] = -2
    elif what == "bool index":
        head["minibatches"][0]["cells"][0] = True
    elif what == "not a list":
        cells[0]["steps"] = "0,1"
    elif what == "derived from another parameter":
        cells[0]["derived"]["T"] = ["no_such_table", "W_leaf", None, [256, 384]]
    elif what == "value shape empty":
        cells[0]["program"]["values"][-1][1] = []


@pytest.mark.parametrize("what", ["op twice", "op missing", "shape broken", "wrong source", "negative index",
                                  "bool index", "not a list", "derived from another parameter",
                                  "value shape empty"])
def test_forged_compiled_cells_are_refused(plan, tmp_path, what):
    path = tmp_path / "p.plan"
    save_plan(plan, path)
    bad = tmp_path / "bad.plan"
    bad.write_bytes(_rewrite_header(path.read_bytes(), lambda h: _forge_cells(h, what)))
    with pytest.raises(ArtifactError, match="compiled cell"):
        load_plan(bad)


def test_plans_hold_the_cells_their_kernels_run(plan, tmp_path):
    path = tmp_path / "p.plan"
    save_plan(plan, path)
    loaded = load_plan(path)
    for before, after in zip(plan.batches, loaded.batches):
        assert [c is None for c in before.cells] == [c is None for c in after.cells]
        for a, b in zip(before.cells, after.cells):
            if a is not None:
                assert a.to_json() == b.to_json() and a.plan.steps == b.plan.steps and a.plan.homes == b.plan.homes
