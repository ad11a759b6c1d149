import numpy as np
import pytest

from edbc.data.lattice_dag import CELL_LEVEL, CELLS, lattice_dag
from edbc.data.typed_dag import format_typed_dag
from edbc.errors import ArtifactError, InputError, UsageError
from edbc.policy.encoding import TypeVocab
from edbc.policy.file import load_policy
from edbc.policy.train import GraphSets, evaluate, train_dag_policy, train_fsm
from edbc.settings import PolicySettings
from edbc.schedule import lower_bound


# Two updates of 2 x 32 steps between evaluations would be slow to learn from; these settings
# only exercise the machinery of PPO (the warm start would meet the target on these small lattices).
TINY = dict(n_envs=2, n_steps=32, batch_size=32, n_epochs=1, eval_every=1, warm_start="none")


def lattice_sets(seed: int, lattices: int, cells=CELL_LEVEL) -> GraphSets:
    """Four training and two held-out lattice-shaped DAGs of `lattices` lattices each."""
    rng = np.random.default_rng(seed)
    return GraphSets(*([lattice_dag(rng, lattices, cells=cells) for _ in range(n)] for n in (4, 2)))


@pytest.fixture(scope="module")
def lattices():
    return lattice_sets(0, 3)


def test_training_keeps_the_best_table_of_its_evaluations(lattices):
    vocab = TypeVocab.of_graphs(lattices.train)
    result = train_fsm(lattices, vocab, PolicySettings(timesteps=192, **TINY))
    assert [e.timesteps for e in result.history] == [64, 128, 192]
    assert result.best.batches == min(e.batches for e in result.history)
    again = evaluate(result.fsm, lattices.heldout)
    assert (again.batches, again.fallbacks) == (result.best.batches, result.best.fallbacks)
    assert again.lower_bound == sum(lower_bound(g) for g in lattices.heldout)


def test_training_stops_once_within_the_target(lattices):
    vocab = TypeVocab.of_graphs(lattices.train)
    result = train_fsm(lattices, vocab, PolicySettings(timesteps=640, target=100.0, **TINY))
    assert result.timesteps == 64 and len(result.history) == 1


def test_environments_in_subprocesses_give_the_same_table(lattices):
    vocab = TypeVocab.of_graphs(lattices.train)
    settings = PolicySettings(timesteps=128, **TINY)
    here = train_fsm(lattices, vocab, settings)
    apart = train_fsm(lattices, vocab, settings, subprocess_envs=True)
    assert apart.fsm.table == here.fsm.table and apart.history == here.history


def test_resume_continues_from_the_checkpoint(lattices, tmp_path):
    vocab = TypeVocab.of_graphs(lattices.train)
    ckpt = str(tmp_path / "run.ckpt")
    first = train_fsm(lattices, vocab, PolicySettings(timesteps=64, **TINY), {"data": "x"}, ckpt)
    assert first.timesteps == 64
    more = train_fsm(lattices, vocab, PolicySettings(timesteps=192, **TINY), {"data": "x"}, ckpt, resume=True)
    assert more.timesteps == 192
    assert [e.timesteps for e in more.history] == [64, 128, 192]
    assert more.history[0] == first.history[0]
    with pytest.raises(ArtifactError, match="another training run .*settings"):
        train_fsm(lattices, vocab, PolicySettings(timesteps=256, encoding="set", **TINY), {"data": "x"}, ckpt,
                  resume=True)
    with pytest.raises(ArtifactError, match="another training run .*data"):
        train_fsm(lattices, vocab, PolicySettings(timesteps=256, **TINY), {"data": "y"}, ckpt, resume=True)
    with pytest.raises(InputError, match="no such checkpoint file"):
        train_fsm(lattices, vocab, PolicySettings(timesteps=256, **TINY), {"data": "x"}, str(tmp_path / "no.ckpt"),
                  resume=True)
    (tmp_path / "run.ckpt").write_bytes(b"EDBC-CHECKPOINT\n0000")
    with pytest.raises(ArtifactError, match="truncated"):
        train_fsm(lattices, vocab, PolicySettings(timesteps=256, **TINY), {"data": "x"}, ckpt, resume=True)


def test_same_seed_gives_the_same_policy_file(lattices, tmp_path, monkeypatch):
    files = []
    for i, g in enumerate(lattices.train + lattices.heldout):
        files.append(tmp_path / f"g{i}.txt")
        files[-1].write_text(format_typed_dag(g))
    train, held = [str(f) for f in files[:4]], [str(f) for f in files[4:]]
    settings = PolicySettings(timesteps=128, seed=5, **TINY)
    a = train_dag_policy(train, held, settings, str(tmp_path / "a.json"))
    train_dag_policy(train, held, settings, str(tmp_path / "b.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = load_policy(tmp_path / "a.json")
    assert loaded.model == "typed-dag" and loaded.granularity == "dag" and loaded.digest == a.digest
    assert loaded.training["settings"]["seed"] == 5 and loaded.training["algorithm"] == "MaskablePPO"
    assert loaded.figures["heldout"]["graphs"] == 2 and len(loaded.fsm.table) == loaded.figures["table_states"]


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="unknown encoding 'bag'"):
        PolicySettings(encoding="bag")
    with pytest.raises(UsageError, match="--timesteps must be at least 1"):
        PolicySettings(timesteps=0)
    with pytest.raises(UsageError, match="--search must be at least 0, got -1"):
        PolicySettings(search=-1)
    with pytest.raises(UsageError, match="unknown warm start 'copy'; expected one of: imitate, none"):
        PolicySettings(warm_start="copy")


WARM = dict(TINY, warm_start="imitate", search=4, clone_steps=20)


@pytest.fixture(scope="module")
def family():
    """Op-level lattices, on which the heuristics stay well above the lower bound."""
    return lattice_sets(1, 2, CELLS)


def test_training_starts_from_the_heuristics_tables(family):
    vocab = TypeVocab.of_graphs(family.train)
    result = train_fsm(family, vocab, PolicySettings(timesteps=128, **WARM))
    stages = [e.stage for e in result.history]
    assert stages == ["imitate agenda", "imitate typewise", "search", "ppo", "ppo"]
    assert result.best.batches == min(e.batches for e in result.history)
    again = train_fsm(family, vocab, PolicySettings(timesteps=128, **WARM))  # the same seed: the same run
    assert again.history == result.history and again.fsm.table == result.fsm.table
    assert evaluate(result.fsm, family.heldout).batches == result.best.batches


def test_a_resumed_warm_started_run_does_not_start_again(family, tmp_path):
    vocab = TypeVocab.of_graphs(family.train)
    ckpt = str(tmp_path / "run.ckpt")
    first = train_fsm(family, vocab, PolicySettings(timesteps=64, **WARM), {"data": "x"}, ckpt)
    more = train_fsm(family, vocab, PolicySettings(timesteps=192, **WARM), {"data": "x"}, ckpt, resume=True)
    assert more.history[:len(first.history)] == first.history
    assert [e.stage for e in more.history[len(first.history):]] == ["ppo", "ppo"]
    assert more.timesteps == 192
