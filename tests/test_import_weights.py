"""Importing PyTorch weights: a module's state_dict, saved and read back, imported through its
shipped mapping, makes edbc compute what the module computes; and every way a state_dict file or a
mapping can be wrong is refused with one line and the exit code of its class."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from edbc.api import compile_batch, load_spec
from edbc.bench.torch_models import build_module
from edbc.checkpoint import Mapping, import_weights, parse_mapping, read_mapping, read_state_dict
from edbc.data import encode, read_instances, spec_vocabs, synthesize
from edbc.errors import EXIT_ARTIFACT, EXIT_INPUT, EXIT_WEIGHTS, ArtifactError, MappingError, WeightsError
from edbc.runtime import Runtime
from edbc.settings import MAPPINGS_DIR, MODELS_DIR, SHARED_SPLITS

from .conftest import shared

MODELS = ("treelstm", "bilstm_tagger", "lattice_lstm")
REAL_INSTANCES = {"treelstm": 48, "bilstm_tagger": 48, "lattice_lstm": 24}
TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small per-node torch ops: one thread is fastest, and many times so on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(name):
    return load_spec(MODELS_DIR / f"{name}.yaml")[0]


def _mapping(name) -> Mapping:
    return read_mapping(MAPPINGS_DIR / f"{name}.yaml")


@pytest.fixture(scope="module", params=MODELS)
def imported(request, tmp_path_factory):
    """A model's module built from a seed, its state_dict saved with torch.save, read back and
    imported through the shipped mapping."""
    spec = _spec(request.param)
    module = build_module(spec, seed=5).eval()
    path = tmp_path_factory.mktemp(request.param) / "m.pt"
    torch.save(module.state_dict(), path)
    weights = import_weights(spec, read_state_dict(path), _mapping(spec.name), source=str(path))
    return spec, module, weights


def _max_error(spec, module, weights, raw: list) -> float:
    instances = encode(raw, spec_vocabs(spec))
    runtime = Runtime(spec, weights=weights)
    out = runtime.prepare(compile_batch(spec, instances)).run()
    with torch.no_grad():
        expected = module(instances)
    assert out.shape == expected.shape
    return (out - expected).abs().max().item()


def test_imported_weights_fit_the_spec(imported):
    spec, _, weights = imported
    assert list(weights) == list(spec.params)
    for name, p in spec.params.items():
        w = weights[name]
        assert tuple(w.shape) == p.shape and w.dtype == torch.float32 and w.is_contiguous(), name


def test_edbc_computes_the_module_on_synthetic_data(imported):
    spec, module, weights = imported
    assert _max_error(spec, module, weights, synthesize(spec, 24, seed=11)) <= TOLERANCE


def test_edbc_computes_the_module_on_real_data(imported):
    spec, module, weights = imported
    split = [s for s in SHARED_SPLITS[spec.kind] if s][-1]
    raw = read_instances(spec.kind, str(shared(split)), REAL_INSTANCES[spec.name])
    assert _max_error(spec, module, weights, raw) <= TOLERANCE


def test_safetensors_and_torch_save_import_alike(tmp_path):
    from safetensors.torch import save_file
    spec = _spec("bilstm_tagger")
    state = build_module(spec, seed=2).state_dict()
    torch.save(state, tmp_path / "m.pt")
    save_file(state, tmp_path / "m.safetensors")
    a = import_weights(spec, read_state_dict(tmp_path / "m.pt"), _mapping(spec.name))
    b = import_weights(spec, read_state_dict(tmp_path / "m.safetensors"), _mapping(spec.name))
    assert all(torch.equal(a[k], b[k]) for k in spec.params)


def test_edbc_names_import_without_a_mapping_and_other_float_types_convert():
    spec = _spec("treelstm")
    own = Runtime(spec).weights
    assert all(torch.equal(own[k], v) for k, v in import_weights(spec, own).items())
    doubled = import_weights(spec, {k: v.double() for k, v in own.items()})
    assert all(v.dtype == torch.float32 and torch.equal(own[k], v) for k, v in doubled.items())


def test_the_result_does_not_share_memory_with_the_state_dict():
    spec = _spec("treelstm")
    own = Runtime(spec).weights
    out = import_weights(spec, own)
    out["E"].zero_()
    assert own["E"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Tensors that do not fit: WeightsError, exit 7, one line naming the tensor and the parameter.

@pytest.fixture
def tagger():
    spec = _spec("bilstm_tagger")
    return spec, dict(build_module(spec, seed=0).state_dict())


def _weights_error(spec, state, mapping=None) -> str:
    with pytest.raises(WeightsError) as e:
        import_weights(spec, state, mapping or _mapping(spec.name), source="model.pt")
    assert e.value.exit_code == EXIT_WEIGHTS == 7
    text = str(e.value)
    assert "\n" not in text and text.startswith("model.pt: ")
    return text


def _shipped_with(name: str, old: str, new: str) -> Mapping:
    """The shipped mapping of `name` with one line changed."""
    text = (MAPPINGS_DIR / f"{name}.yaml").read_text()
    assert old in text
    return parse_mapping(text.replace(old, new), "m.yaml")


def test_a_missing_tensor_is_named(tagger):
    spec, state = tagger
    del state["lstm.weight_hh_l0"]
    text = _weights_error(spec, state)
    assert "no tensor 'lstm.weight_hh_l0'" in text and "parameter Uf" in text and "bilstm_tagger.yaml:" in text


def test_a_missing_tensor_without_a_mapping_says_parameters_are_read_by_their_own_name(tagger):
    spec, state = tagger
    text = _weights_error(spec, state, Mapping())
    assert "no tensor 'E'" in text and "read by its own name" in text and "embedding.weight" in text


def test_an_extra_tensor_is_named_unless_ignored(tagger):
    spec, state = tagger
    state["extra.weight"] = torch.zeros(3)
    text = _weights_error(spec, state)
    assert "'extra.weight' is read by no parameter" in text and "ignore:" in text
    mapping = _mapping(spec.name)
    ignoring = Mapping(mapping.params, ("extra.*",), mapping.path)
    assert list(import_weights(spec, state, ignoring)) == list(spec.params)


def test_an_integer_tensor_is_refused_unless_ignored(tagger):
    spec, state = tagger
    state["bn.num_batches_tracked"] = torch.tensor(12)
    assert "'bn.num_batches_tracked' (int64) is read by no parameter" in _weights_error(spec, state)
    ignoring = parse_mapping((MAPPINGS_DIR / "bilstm_tagger.yaml").read_text() + "ignore: ['*.num_batches_tracked']\n")
    import_weights(spec, state, ignoring)
    state["out.bias"] = state["out.bias"].long()
    text = _weights_error(spec, state, ignoring)
    assert "tensor 'out.bias' is int64, not floating point" in text and "parameter b_out" in text


def test_a_misshaped_tensor_suggests_transpose(tagger):
    spec, state = tagger
    mapping = _shipped_with("bilstm_tagger", "Wf: {from: lstm.weight_ih_l0, chunks: 4, take: [0, 1, 3, 2], "
                            "transpose: true}", "Wf: lstm.weight_ih_l0")
    text = _weights_error(spec, state, mapping)
    assert "tensor lstm.weight_ih_l0 is [512, 128]; parameter Wf (m.yaml:6:7) needs [128, 512] " \
           "(transpose: true?)" in text


def test_a_misshaped_expression_is_shown_as_written(tagger):
    spec, state = tagger
    mapping = _shipped_with("bilstm_tagger", "take: [0], transpose: true}", "take: [0]}")
    text = _weights_error(spec, state, mapping)
    assert "{from: out.weight, dim: 1, chunks: 2, take: [0]} gives [5, 128]; parameter O_f" in text
    assert "(transpose: true?)" in text


def test_nan_and_inf_are_refused(tagger):
    spec, state = tagger
    state["lstm.weight_ih_l0"][3, 4] = float("nan")
    assert "tensor 'lstm.weight_ih_l0' holds 1 NaN value (parameter Wf)" in _weights_error(spec, state)
    state["lstm.weight_ih_l0"][3, 5] = float("inf")
    assert "holds 1 NaN and 1 infinite values" in _weights_error(spec, state)


def test_float64_beyond_float32_is_refused(tagger):
    spec, state = tagger
    state["out.bias"] = state["out.bias"].double()
    state["out.bias"][0] = 1e300
    assert "tensor 'out.bias' holds values beyond float32's range" in _weights_error(spec, state)


def test_chunks_that_do_not_divide_are_refused(tagger):
    spec, state = tagger
    mapping = _shipped_with("bilstm_tagger", "Wf: {from: lstm.weight_ih_l0, chunks: 4, take: [0, 1, 3, 2]",
                            "Wf: {from: lstm.weight_ih_l0, chunks: 3, take: [0, 1, 2]")
    text = _weights_error(spec, state, mapping)
    assert "tensor lstm.weight_ih_l0 is [512, 128]: chunks: 3 does not divide its dimension 0 (512)" in text
    assert "parameter Wf" in text


def test_a_dimension_the_tensor_lacks_and_transposing_a_vector_are_refused(tagger):
    spec, state = tagger
    mapping = _shipped_with("bilstm_tagger", "b_out: out.bias", "b_out: {from: out.bias, dim: 1, chunks: 1, take: [0]}")
    assert "tensor out.bias is [5], which has no dimension 1" in _weights_error(spec, state, mapping)
    mapping = _shipped_with("bilstm_tagger", "b_out: out.bias", "b_out: {from: out.bias, transpose: true}")
    assert "a 1-D tensor cannot be transposed" in _weights_error(spec, state, mapping)


def test_summed_tensors_of_different_shapes_are_refused(tagger):
    spec, state = tagger
    mapping = _shipped_with("bilstm_tagger", "b_out: out.bias", "b_out: {sum: [out.bias, lstm.bias_ih_l0]}")
    assert "sum: out.bias is [5] but lstm.bias_ih_l0 is [512]" in _weights_error(spec, state, mapping)


def test_a_mapping_naming_a_parameter_the_model_lacks_is_a_mapping_error(tagger):
    spec, state = tagger
    mapping = parse_mapping("params:\n  E: embedding.weight\n  Wx: lstm.weight_ih_l0\n", "m.yaml")
    with pytest.raises(MappingError) as e:
        import_weights(spec, state, mapping)
    assert e.value.exit_code == EXIT_INPUT
    assert str(e.value).startswith("m.yaml:3:7: params: model 'bilstm_tagger' has no parameter 'Wx'")


# ---------------------------------------------------------------------------------------------
# Malformed mappings: MappingError, exit 3, at the line and column.

@pytest.mark.parametrize("text, where, message", [
    ("params: {E: [", "1:14", "YAML syntax error"),
    ("params:\n  E: {from: a, chunk: 4}\n", "2:23", "params.E: unknown key 'chunk'; expected one of: from, sum"),
    ("weights: {}\n", "1:10", "the mapping: unknown key 'weights'; expected one of: params, ignore"),
    ("params:\n  E: {from: a, take: [0, 4], chunks: 4}\n", "2:26",
     "params.E.take: part 4 is out of range; 4 chunks are numbered 0 to 3"),
    ("params:\n  E: {from: a, chunks: 4}\n", "2:24", "params.E: chunks needs take"),
    ("params:\n  E: {from: a, sum: [b]}\n", "2:6",
     "params.E needs exactly one of from, sum, concat; it has from and sum"),
    ("params:\n  E: {transpose: true}\n", "2:6", "it has none"),
    ("params:\n  E: {from: a, transpose: yes please}\n", "2:27", "params.E.transpose must be true or false"),
    ("params:\n  E: {from: a, dim: 1}\n", "2:21", "params.E.dim is the dimension that concat joins and chunks cuts"),
    ("params:\n  E: {sum: []}\n", "2:12", "params.E.sum must list at least one expression"),
    ("params:\n  E: 3\n", "2:6", "params.E must be a tensor name, or a mapping with one of from, sum, concat; got 3"),
    ("params:\n  E: {concat: [a, {from: ''}]}\n", "2:26", "params.E.concat[1].from must be a tensor name"),
    ("ignore: [3]\n", "1:10", "ignore: each entry must be a tensor name"),
    ("", None, "the mapping is empty"),
])
def test_malformed_mappings_are_refused_at_their_position(text, where, message):
    with pytest.raises(MappingError) as e:
        parse_mapping(text, "m.yaml")
    assert e.value.exit_code == EXIT_INPUT
    shown = str(e.value)
    assert "\n" not in shown and message in shown
    assert shown.startswith(f"m.yaml:{where}: " if where else "m.yaml: "), shown


def test_the_yaml_composer_bounds_hold_for_mappings():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, "
        f"*{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}]\n"
        for k in range(6))
    with pytest.raises(MappingError, match="the mapping expands to more than 50000 YAML values"):
        parse_mapping(bomb, "m.yaml")


def test_a_mapping_file_is_read_with_its_path(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("params:\n  E: {from: emb.weight, transpose: tru}\n")
    with pytest.raises(MappingError, match=r"m\.yaml:2:36: params\.E\.transpose must be true or false"):
        read_mapping(path)
    with pytest.raises(MappingError, match="no such mapping file"):
        read_mapping(tmp_path / "absent.yaml")


def test_the_shipped_mappings_parse():
    for name in ("treelstm", "bilstm_tagger", "lattice_lstm", "lstm_seq2seq"):
        mapping = _mapping(name)
        assert set(mapping.params) <= set(_spec(name).params)


# ---------------------------------------------------------------------------------------------
# State dict files that cannot be read safely: ArtifactError, exit 5, one line, nothing run.

class _Touch:
    """Creates a file when unpickled: code that a state_dict file can carry."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _artifact_error(path) -> str:
    with pytest.raises(ArtifactError) as e:
        read_state_dict(path)
    assert e.value.exit_code == EXIT_ARTIFACT == 5
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    return text


def test_the_payload_is_live_for_plain_torch_load(tmp_path):
    """The premise of the next test: loading this file without weights_only runs its command."""
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "x": _Touch(str(marker))}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_a_pickle_payload_is_refused_and_nothing_runs(tmp_path, container):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"w": torch.zeros(2), "x": _Touch(str(marker))}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(_Touch(str(marker))))
    text = _artifact_error(path)
    assert not marker.exists()
    assert "refused" in text and "nothing in it was run" in text and "model.state_dict()" in text
    if container == "torch.save":
        assert "posix.system" in text or "nt.system" in text


def test_a_truncated_torch_file_is_refused(tmp_path, tagger):
    _, state = tagger
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "m.pt").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert "cannot be read as a torch.save file (truncated or corrupt?)" in _artifact_error(tmp_path / "m.pt")


def test_a_truncated_safetensors_file_is_refused(tmp_path, tagger):
    from safetensors.torch import save
    _, state = tagger
    data = save(state)
    (tmp_path / "m.safetensors").write_bytes(data[:-100])
    assert "not a valid safetensors file (truncated or corrupt?)" in _artifact_error(tmp_path / "m.safetensors")


def test_a_nested_checkpoint_says_to_save_the_state_dict_itself(tmp_path, tagger):
    _, state = tagger
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
    text = _artifact_error(tmp_path / "ckpt.pt")
    assert "entry 'model' is a mapping of 11 entries, not a tensor: a checkpoint that nests its state_dict " \
           "under 'model'; save model.state_dict() itself" in text


@pytest.mark.parametrize("value, message", [
    ([torch.zeros(2)], "the file holds a list of 1 items, not a state_dict"),
    ({"w": torch.zeros(2), "epoch": 3}, "entry 'epoch' is an int, not a tensor"),
    ({}, "the state_dict holds no tensors"),
    ({1: torch.zeros(2)}, "a key that is an int, not a tensor name"),
    ({"w": torch.zeros(2, 2).to_sparse()}, "tensor 'w' is stored sparse_coo; expected dense tensors"),
])
def test_files_that_are_not_state_dicts_are_refused(tmp_path, value, message):
    torch.save(value, tmp_path / "m.pt")
    assert message in _artifact_error(tmp_path / "m.pt")


def test_missing_and_non_regular_files_are_refused(tmp_path):
    assert "no such state_dict file" in _artifact_error(tmp_path / "absent.pt")
    assert "is a directory" in _artifact_error(tmp_path)
