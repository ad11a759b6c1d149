import hashlib
import json

import pytest

from edbc.artifact import _canonical
from edbc.errors import ArtifactError, InputError
from edbc.policy.encoding import TypeVocab
from edbc.policy.file import PolicyFile, check_policy, load_policy, save_policy
from edbc.policy.fsm import Fsm


def policy(**kw) -> PolicyFile:
    fsm = Fsm(TypeVocab(("leaf", "node", "classify")), "sorted", {(0,): 0, (1,): 1, (1, 2): 1, (2, 1): 1, (2,): 2})
    args = dict(model="treelstm", spec_digest="ab" * 32, granularity="cell", fsm=fsm,
                training={"seed": 0, "algorithm": "MaskablePPO"}, figures={"heldout": {"batches": 3}})
    return PolicyFile(**dict(args, **kw))


def rewrite(path, change):
    doc = json.loads(path.read_text())
    doc.pop("checksum")
    change(doc)
    doc["checksum"] = hashlib.sha256(_canonical(doc)).hexdigest()
    path.write_text(json.dumps(doc))


def test_round_trip_is_exact_and_deterministic(tmp_path):
    p = policy()
    save_policy(p, tmp_path / "a.json")
    back = load_policy(tmp_path / "a.json")
    assert back.fsm.table == p.fsm.table and back.fsm.vocab == p.fsm.vocab and back.fsm.encoding == "sorted"
    assert (back.model, back.spec_digest, back.granularity) == ("treelstm", "ab" * 32, "cell")
    assert back.digest == p.digest
    save_policy(back, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["format"] == "edbc.policy" and doc["version"] == "1.0" and doc["types"][0] == "leaf"


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "p.json"
    save_policy(policy(), path)
    text = path.read_text()
    path.write_text(text.replace('[[1, 2], 1]', '[[1, 2], 2]'))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_policy(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_policy(path)
    path.write_text(text)
    rewrite(path, lambda d: d.update(version="2.0"))
    with pytest.raises(ArtifactError, match="schema version 2.0 is not supported; this edbc reads edbc.policy 1.x"):
        load_policy(path)
    path.write_text(text)
    rewrite(path, lambda d: d["table"].append([[0, 1], 2]))
    with pytest.raises(ArtifactError, match="corrupt table"):
        load_policy(path)
    path.write_text(text)
    rewrite(path, lambda d: d.pop("types"))
    with pytest.raises(ArtifactError, match="types is missing or null; expected a list"):
        load_policy(path)
    path.write_text('{"format": "edbc.plan"}')
    with pytest.raises(ArtifactError, match="this is an 'edbc.plan' file, not an 'edbc.policy' file"):
        load_policy(path)
    with pytest.raises(InputError, match="no such policy file"):
        load_policy(tmp_path / "none.json")


def test_a_policy_for_another_model_or_level_is_refused():
    p = policy()
    check_policy(p, "p.json", "treelstm", "ab" * 32, "cell")
    with pytest.raises(ArtifactError, match="trained for model 'treelstm', not for model 'treegru'"):
        check_policy(p, "p.json", "treegru", "cd" * 32, "cell")
    with pytest.raises(ArtifactError, match="another version of model 'treelstm'"):
        check_policy(p, "p.json", "treelstm", "cd" * 32, "cell")
    with pytest.raises(ArtifactError, match="trained at cell level, the graphs are at op level"):
        check_policy(p, "p.json", "treelstm", "ab" * 32, "op")
    with pytest.raises(ArtifactError, match="not for bare typed DAGs"):
        check_policy(p, "p.json", "typed-dag", None, "dag")
    dag = policy(model="typed-dag", spec_digest=None, granularity="dag")
    with pytest.raises(ArtifactError, match="trained for bare typed DAGs, not for model 'treelstm'"):
        check_policy(dag, "p.json", "treelstm", "ab" * 32, "cell")


def test_every_shipped_policy_records_that_it_is_no_worse_than_the_best_heuristic():
    from edbc.settings import MODELS_DIR, PLANS_DIR

    shipped = sorted(PLANS_DIR.glob("*.policy.json"))
    assert len(shipped) == 2 * len(list(MODELS_DIR.glob("*.yaml")))  # every bundled model, cell and op level
    for path in shipped:
        f = load_policy(path).figures["heldout"]
        assert f["held_out"] and set(f["baselines"]) == {"depth", "agenda", "typewise"}, path
        assert f["batches"] <= min(f["baselines"].values()) == f["baselines"][f["best_heuristic"]], path
