"""Training checkpoints hold tensors (safetensors) and JSON, never a pickle: a forged checkpoint,
however valid its checksums, is refused with one line and runs nothing."""

import io

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors, save as save_tensors

from edbc.errors import EXIT_ARTIFACT, ArtifactError
from edbc.policy.encoding import TypeVocab
from edbc.policy.train import CHECKPOINT_FORMAT, CHECKPOINT_MAGIC, train_fsm
from edbc.settings import PolicySettings

from .conftest import TREELSTM
from .forge import command_pickle, old_checkpoint_with_payload, reencode, sb3_zip_with_payload
from .test_cli import edbc, one_line_error
from .test_policy_train import TINY, lattices  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def checkpoint(lattices, tmp_path_factory):
    """A checkpoint after one evaluation, and the vocabulary of its run."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    vocab = TypeVocab.of_graphs(lattices.train)
    train_fsm(lattices, vocab, PolicySettings(timesteps=64, **TINY), {"data": "x"}, str(path))
    return path.read_bytes(), vocab


def resume(lattices, vocab, path, timesteps=128):
    return train_fsm(lattices, vocab, PolicySettings(timesteps=timesteps, **TINY), {"data": "x"}, str(path),
                     resume=True)


def test_the_forged_payload_is_live_for_stable_baselines3(tmp_path):
    """The premise of the next test: the crafted zip runs its command when stable-baselines3 loads it."""
    from stable_baselines3.common.save_util import load_from_zip_file

    marker = tmp_path / "unpickled"
    try:
        load_from_zip_file(io.BytesIO(sb3_zip_with_payload(str(marker))))
    except Exception:  # noqa: BLE001 - whatever it makes of the rest, the command has run
        pass
    assert marker.exists()


def test_resume_refuses_an_old_checkpoint_without_unpickling_it(tmp_path):
    marker = tmp_path / "unpickled"
    ckpt = tmp_path / "t.policy.ckpt"
    ckpt.write_bytes(old_checkpoint_with_payload(str(marker)))
    out = tmp_path / "t.policy.json"
    r = edbc("train-policy", TREELSTM, "--limit", 20, "-b", 4, "--timesteps", 100, "--resume", "-o", out)
    one_line_error(r, EXIT_ARTIFACT, f"Error: {ckpt}: schema version 1.0 is not supported")
    assert not marker.exists() and not out.exists()


def test_a_pickle_in_place_of_the_tensors_is_refused_and_not_run(lattices, checkpoint, tmp_path):
    data, vocab = checkpoint
    marker = tmp_path / "unpickled"
    path = tmp_path / "run.ckpt"

    def swap(head, arrays):
        arrays["tensors"] = np.frombuffer(command_pickle(f"touch {marker}"), dtype=np.uint8)
    path.write_bytes(reencode(data, CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, 2, swap))
    with pytest.raises(ArtifactError, match="the part 'tensors' is not a safetensors document"):
        resume(lattices, vocab, path)
    assert not marker.exists()


def _with_tensors(change):
    def forge(head, arrays):
        tensors = load_tensors(arrays["tensors"].tobytes())
        change(tensors)
        arrays["tensors"] = np.frombuffer(save_tensors(tensors), dtype=np.uint8)
    return forge


def _first(prefix):
    return lambda tensors: sorted(k for k in tensors if k.startswith(prefix))[0]


FORGED = {
    "a tensor of the wrong shape": (
        _with_tensors(lambda t: t.update({_first("policy/")(t): torch.zeros(3)})), "expected float32"),
    "a tensor of the wrong dtype": (
        _with_tensors(lambda t: t.update({_first("policy/")(t): t[_first("policy/")(t)].double()})),
        "is float64"),
    "a NaN weight": (
        _with_tensors(lambda t: t[_first("policy/")(t)].view(-1).__setitem__(0, float("nan"))), "NaN or infinite"),
    "a missing optimizer state": (
        _with_tensors(lambda t: t.pop(_first("optimizer/")(t))), "is missing"),
    "an extra tensor": (_with_tensors(lambda t: t.update({"policy/extra": torch.zeros(1)})), "is unexpected"),
    "no tensors part": (lambda h, a: a.pop("tensors"), "the part 'tensors' is missing"),
    "tensors as int32": (lambda h, a: a.update(tensors=a["tensors"].view(np.int32)[:4]), "not bytes"),
    "negative timesteps": (lambda h, a: h.update(timesteps=-5), "timesteps is -5"),
    "timesteps as a float": (lambda h, a: h.update(timesteps=64.0), "timesteps is 64.0"),
    "a boolean in the history": (lambda h, a: h["history"][0].update(batches=True), "history's batches is true"),
    "a history entry with a field too many": (lambda h, a: h["history"][0].update(x=1), "corrupt history"),
    "a string for the best table": (lambda h, a: h.update(best_table="[[0], 0]"), "table is \"[[0], 0]\""),
    "a duplicate state in the best table": (
        lambda h, a: h["best_table"].append(h["best_table"][0]), "appears twice"),
    "another run": (lambda h, a: h["run"].update(data="y"), "belongs to another training run (data differ)"),
}


@pytest.mark.parametrize("name", FORGED)
def test_forged_checkpoints_are_refused(lattices, checkpoint, tmp_path, name):
    data, vocab = checkpoint
    change, message = FORGED[name]
    path = tmp_path / "run.ckpt"
    path.write_bytes(reencode(data, CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, 2, change))
    with pytest.raises(ArtifactError) as e:
        resume(lattices, vocab, path)
    assert message in str(e.value) and str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_a_resumed_run_is_deterministic(lattices, checkpoint, tmp_path):
    data, vocab = checkpoint
    results = []
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / name).write_bytes(data)
        results.append(resume(lattices, vocab, tmp_path / name, timesteps=192))
    a, b = results
    assert a.history == b.history and a.fsm.table == b.fsm.table and a.timesteps == b.timesteps == 192
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()
