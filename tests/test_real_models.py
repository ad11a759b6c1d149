"""Real models: checkpoints (`edbc init`, `--weights`), vocabularies that never depend on the file
being run, predictions out (`run --output`, `--predict`), the Python API (`edbc.load`), and weights
changed in place seen by the next run."""

import json

import pytest
import torch
from safetensors import safe_open

import edbc
from edbc.api import compile_batch, init_checkpoint, load, load_spec, run_target
from edbc.bench.torch_models import build_module
from edbc.checkpoint import load_checkpoint
from edbc.data import build_labels, synthesize
from edbc.errors import EXIT_ARTIFACT, EXIT_USAGE, ArtifactError, UsageError
from edbc.runtime import Runtime
from edbc.settings import MAPPINGS_DIR, MODELS_DIR, SHARED_SPLITS

from .conftest import TREELSTM, shared
from .test_cli import edbc as run_cli, one_line_error

BUNDLED = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
TREES = ["(3 (2 An) (3 (4 fine) (2 film)))", "(1 (2 a) (1 (0 dull) (2 film)))", "(2 film)"]


@pytest.fixture(scope="module")
def tree_checkpoint(tmp_path_factory):
    """A TreeLSTM checkpoint whose vocabulary comes from a few trees."""
    folder = tmp_path_factory.mktemp("ckpt")
    data = folder / "train.txt"
    data.write_text("\n".join(TREES * 3 + ["(0 (1 awful) (2 film))"]) + "\n")
    path = folder / "model.safetensors"
    init_checkpoint(str(TREELSTM), str(path), str(data))
    return path


def test_init_builds_vocabularies_and_labels_and_round_trips(tree_checkpoint):
    spec, _ = load_spec(TREELSTM)
    ckpt = load_checkpoint(str(tree_checkpoint), spec)
    assert ckpt.vocabs["word"].words[0] == "film"  # the most frequent word gets id 1
    assert ckpt.vocabs["word"].lookup("film") == 1 and ckpt.vocabs["word"].lookup("unseen") == 0
    assert ckpt.labels == ("0", "1", "2", "3", "4")
    assert ckpt.provenance["command"] == "init" and ckpt.provenance["instances"] == 10
    seeded = Runtime(spec).weights
    assert all(torch.equal(ckpt.weights[k], seeded[k]) for k in spec.params)


def test_string_labels_get_classes_by_frequency_and_must_fit():
    assert build_labels(["O", "I-PER", "O", "I-LOC", "I-PER", "O"], 4) == ("O", "I-PER", "I-LOC", "<unused 3>")
    assert build_labels(["3", "0", "4"], 5) == ("0", "1", "2", "3", "4")
    assert "3 distinct labels, more than the readout's 2 classes" in build_labels(["a", "b", "c"], 2)


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_a_sentence_gets_the_same_outputs_in_any_file_and_with_any_limit(tmp_path, tree_checkpoint, with_checkpoint):
    weights = str(tree_checkpoint) if with_checkpoint else None
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(TREES[1] + "\n")
    large.write_text("\n".join(["(4 (4 great) (3 (2 lovely) (2 cast)))", TREES[1], *TREES]) + "\n")
    outputs = []
    for data, limit in ((small, None), (large, None), (large, 2)):
        out = tmp_path / f"{data.stem}-{limit}.jsonl"
        # One instance a mini-batch: what is around a sentence could then only reach it through its ids.
        run_target(str(TREELSTM), str(data), limit, 1, policy="agenda", weights=weights, output=str(out))
        outputs.append(json.loads(out.read_text().splitlines()[0 if data == small else 1])["logits"])
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("model", BUNDLED)
def test_run_output_holds_every_instance_in_input_order_equal_to_the_reference(tmp_path, model):
    spec_path = str(MODELS_DIR / f"{model}.yaml")
    out = tmp_path / "out.jsonl"
    report, _ = run_target(spec_path, None, 7, batch_size=3, check=True, output=str(out), predict=True)
    assert report.check_passed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["index"] for d in lines] == list(range(7))
    # The same instances one at a time: each file row is that instance's own result.
    model_ = load(spec_path)
    alone = [model_.predict(model_.data(None, 7).instances[i:i + 1])[0] for i in range(7)]
    for d, rows in zip(lines, alone):
        written = torch.tensor(d["logits"]).reshape(rows.shape)
        assert torch.allclose(written, rows, atol=1e-5)
        names = d["label"] if isinstance(d.get("label"), str) else d["labels"]
        assert names == (model_.label_names(rows)[0] if isinstance(names, str) else model_.label_names(rows))


def test_predict_writes_the_tag_names_of_the_checkpoint(tmp_path):
    tagger = str(MODELS_DIR / "bilstm_tagger.yaml")
    train = tmp_path / "train.txt"
    train.write_text("John|I-PER lives|O in|O Paris|I-LOC\nThe|O UN|I-ORG met|O\n")
    ckpt = tmp_path / "tagger.safetensors"
    init_checkpoint(tagger, str(ckpt), str(train))
    out = tmp_path / "tags.jsonl"
    run_target(tagger, str(train), weights=str(ckpt), output=str(out), predict=True)
    first = json.loads(out.read_text().splitlines()[0])
    assert len(first["labels"]) == 4 and set(first["labels"]) <= {"O", "I-PER", "I-LOC", "I-ORG", "<unused 4>"}
    assert load_checkpoint(str(ckpt), load_spec(tagger)[0]).labels[0] == "O"


def test_safetensors_output_holds_rows_offsets_and_predictions(tmp_path):
    out = tmp_path / "out.safetensors"
    report, _ = run_target(str(MODELS_DIR / "bilstm_tagger.yaml"), None, 5, output=str(out), predict=True)
    with safe_open(str(out), "pt") as f:
        rows, offsets, best = f.get_tensor("outputs"), f.get_tensor("offsets"), f.get_tensor("predictions")
        meta = f.metadata()
    assert offsets[0] == 0 and offsets[-1] == len(rows) == len(best) and len(offsets) == 6
    assert torch.equal(best, rows.argmax(dim=1))
    assert meta["format"] == "edbc.outputs" and meta["readout"] == "logits" and json.loads(meta["labels"])[0] == "0"


def test_a_plan_runs_with_its_checkpoint_only(tmp_path, tree_checkpoint):
    data = tmp_path / "d.txt"
    data.write_text("\n".join(TREES) + "\n")
    plan = tmp_path / "p.plan"
    assert run_cli("compile", TREELSTM, "--data", data, "--weights", tree_checkpoint, "-o", plan).exit_code == 0
    direct, from_plan = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_target(str(TREELSTM), str(data), weights=str(tree_checkpoint), output=str(direct))
    run_target(str(plan), weights=str(tree_checkpoint), output=str(from_plan))
    assert direct.read_text() == from_plan.read_text()
    other = tmp_path / "other.safetensors"
    init_checkpoint(str(TREELSTM), str(other), None, 20)
    one_line_error(run_cli("run", plan, "--weights", other), EXIT_ARTIFACT, "not the one given")
    one_line_error(run_cli("run", plan), EXIT_USAGE, "give it with --weights")
    summary = run_cli("inspect", plan, "--weights", tree_checkpoint).stdout
    assert "checkpoint" in summary and "vocabularies word 256 ids (6 words)" in summary


def test_changing_weights_in_place_or_by_entry_is_seen_by_the_next_run():
    spec, _ = load_spec(TREELSTM)
    model = load(TREELSTM, policy="agenda")
    compiled = compile_batch(spec, model.data(None, 12).instances, "agenda")
    runtime = model.runtime
    executable = runtime.prepare(compiled)
    before = executable.run()
    with torch.no_grad():  # as an optimizer steps: in place
        model.weights["W_leaf"].mul_(1.5)  # folded into the embedding table E @ W_leaf + b_leaf
        model.weights["U_r"].add_(0.05)  # stacked with U_l in the node kernel
    after = executable.run()
    assert (after - before).abs().max() > 1e-3
    assert (after - runtime.reference(compiled.cell_graph)).abs().max() <= 1e-5
    model.weights["E"] = torch.randn_like(model.weights["E"])  # replaced
    assert (executable.run() - runtime.reference(compiled.cell_graph)).abs().max() <= 1e-5


def test_the_readme_api_example(tmp_path, tree_checkpoint):
    model = edbc.load("configs/models/treelstm.yaml", weights=str(tree_checkpoint))
    scores = model.predict(["(3 (2 a) (3 (2 good) (2 film)))", "(2 film)"])
    assert [tuple(s.shape) for s in scores] == [(1, 5), (1, 5)]
    assert model.label_names(scores[0])[0] in model.labels
    plan = model.compile(["(2 film)"])
    assert plan.weights_digest == model.checkpoint.digest and plan.num_instances == 1


def test_predict_takes_a_path_text_or_instances_and_refuses_anything_else(tmp_path):
    model = load(TREELSTM, policy="agenda")
    path = tmp_path / "t.txt"
    path.write_text("\n".join(TREES) + "\n")
    by_path = model.predict(path)
    by_text = model.predict(TREES)
    by_object = model.predict(model.instances(TREES))
    assert all(torch.equal(a, b) and torch.equal(b, c) for a, b, c in zip(by_path, by_text, by_object))
    with pytest.raises(UsageError):
        model.predict([1, 2])
    with pytest.raises(edbc.errors.DataError, match="instance 1"):
        model.predict(["(2 a)", "(2 a"])


def test_lattice_instances_are_given_as_their_lines():
    model = load(MODELS_DIR / "lattice_lstm.yaml", policy="agenda")
    (rows,) = model.predict(["3\n0 3 0\n0\n1 0 5\n2 1 6 0 7\n"])
    assert rows.shape == (2, model.spec.classes)  # nodes 1 and 2: the start node has no state to tag


def test_output_and_predict_are_checked_before_the_run(tmp_path):
    with pytest.raises(UsageError, match="give --output"):
        run_target(str(TREELSTM), predict=True)
    with pytest.raises(UsageError, match="unknown format"):
        run_target(str(TREELSTM), output=str(tmp_path / "x.txt"))
    assert not list(tmp_path.iterdir())


def test_init_on_sst_and_run_on_its_test_split(tmp_path):
    train, _, test = SHARED_SPLITS["tree"]
    shared(train)  # skips without ../shared/data
    ckpt = tmp_path / "sst.safetensors"
    assert run_cli("init", TREELSTM, "--data", shared(train), "-o", ckpt).exit_code == 0
    out = tmp_path / "out.jsonl"
    assert run_cli("run", TREELSTM, "--weights", ckpt, "--data", shared(test), "--limit", 40, "--output", out,
                   "--predict", "--check").exit_code == 0
    assert len(out.read_text().splitlines()) == 40
    with pytest.raises(ArtifactError, match="not 'treegru'"):
        load(MODELS_DIR / "treegru.yaml", weights=ckpt)


def _write(instances, kind: str, path) -> None:
    if kind == "tree":
        path.write_text("\n".join(t.to_ptb() for t in instances) + "\n")
    else:
        path.write_text("\n".join(" ".join(f"{w}|{t}" for w, t in zip(s.words, s.tags)) for s in instances) + "\n")


@pytest.mark.parametrize("model", ["treelstm", "bilstm_tagger"])
def test_a_pytorch_module_imported_with_the_cli_runs_as_itself(tmp_path, model):
    """module -> torch.save -> `edbc import-weights` -> `edbc run --weights --output`: the file holds
    the module's outputs (the tagger's vocabulary given as a word list, the tree's built from data)."""
    spec_path = MODELS_DIR / f"{model}.yaml"
    spec, _ = load_spec(spec_path)
    data = tmp_path / "data.txt"
    _write(synthesize(spec, 12, seed=3), spec.kind, data)
    module = build_module(spec, seed=4).eval()
    torch.save(module.state_dict(), tmp_path / "module.pt")
    if model == "treelstm":
        vocab = ["--data", data]
    else:
        (tmp_path / "words.txt").write_text("\n".join(f"w{k}" for k in range(40)) + "\n")
        vocab = ["--vocab", f"word={tmp_path / 'words.txt'}"]
    ckpt = tmp_path / "model.safetensors"
    assert run_cli("import-weights", spec_path, tmp_path / "module.pt", "--map", MAPPINGS_DIR / f"{model}.yaml",
                   *vocab, "-o", ckpt).exit_code == 0
    out = tmp_path / "out.jsonl"
    assert run_cli("run", spec_path, "--weights", ckpt, "--data", data, "--output", out).exit_code == 0
    written = torch.cat([torch.tensor(json.loads(line)["logits"]).reshape(-1, spec.classes)
                         for line in out.read_text().splitlines()])
    with torch.no_grad():
        expected = module(load(spec_path, weights=ckpt).instances(data))
    assert (written - expected).abs().max() <= 1e-5
    assert load_checkpoint(str(ckpt), spec).provenance["command"] == "import-weights"
