"""Forged artifacts: plans, policies and checkpoints whose checksums are recomputed after one field
is changed, so that only edbc's validation of what they say stands between them and the runtime.

`python -m tests.forge` writes the forged files of the bad-input corpus (tests/bad_inputs/).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from edbc import artifact
from edbc.policy.train import CHECKPOINT_FORMAT, CHECKPOINT_MAGIC


def rewrite_header(data: bytes, magic: bytes, change) -> bytes:
    """`change(head)` on an artifact's JSON header; checksum recomputed, parts kept byte for byte."""
    pos = len(magic)
    length = int(data[pos:pos + 12])
    head = json.loads(data[pos + 13:pos + 13 + length])
    head.pop("checksum")
    change(head)
    head["checksum"] = hashlib.sha256(artifact._canonical(head)).hexdigest()
    text = artifact._canonical(head)
    return magic + f"{len(text):012d}\n".encode() + text + data[pos + 13 + length:]


def reencode(data: bytes, magic: bytes, fmt: str, major: int, change) -> bytes:
    """`change(head, arrays)` on a decoded artifact (arrays writable copies); encoded again, so
    every checksum is valid."""
    head, arrays = artifact.decode_artifact("forged", data, magic, fmt, major)
    arrays = {k: v.copy() for k, v in arrays.items()}
    change(head, arrays)
    version = tuple(int(x) for x in head.pop("version").split("."))
    fmt = head.pop("format")
    head.pop("parts")
    return artifact.encode_artifact(magic, fmt, version, head, arrays)


def rewrite_policy(text: str, change) -> str:
    doc = json.loads(text)
    doc.pop("checksum")
    change(doc)
    doc["checksum"] = hashlib.sha256(artifact._canonical(doc)).hexdigest()
    return json.dumps(doc, sort_keys=True, indent=1)


class _Command:
    """Runs a shell command when unpickled: what a forged stable-baselines3 zip can carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def command_pickle(command: str) -> bytes:
    import pickle
    return pickle.dumps(_Command(command))


def sb3_zip_with_payload(marker: str) -> bytes:
    """A stable-baselines3 model zip whose `data` entry holds a (cloud)pickle that creates `marker`
    when stable-baselines3's loader reads it."""
    payload = base64.b64encode(command_pickle(f"touch {marker}")).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": payload}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.3.0")
    return buffer.getvalue()


def old_checkpoint_with_payload(marker: str, run: dict | None = None) -> bytes:
    """A checkpoint of the old format (1.0: a stable-baselines3 zip as part 'model'), its checksums
    valid, whose zip would create `marker` if it were unpickled."""
    header = {"run": run or {}, "timesteps": 2048, "best_table": [], "history": []}
    blob = np.frombuffer(sb3_zip_with_payload(marker), dtype=np.uint8)
    return artifact.encode_artifact(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, (1, 0), header, {"model": blob})


# ---------------------------------------------------------------------------------------------
# Forged plans: name -> (change, what the one-line error must say). The base plan is op level, so
# that both graphs are there: "0/cell/..." the cell-level one, "0/exec/..." its lowering.

def _mb(head, key="cell_graph"):
    return head["minibatches"][0][key]


def _set(name, index, value):
    def change(head, arrays):
        arrays[name][index] = value
    return change


def _replace(name, value):
    def change(head, arrays):
        arrays[name] = value(arrays[name])
    return change


PLAN_FORGERIES = {
    "node_type_out_of_range": (_set("0/cell/node_type", 0, 99), "type 99 is not one of the"),
    "argument_forward": (_set("0/cell/arg_node", 0, 10_000), "argument refers to node 10000"),
    "argument_slot": (_set("0/cell/arg_slot", 0, 7), "argument slot 7 does not exist"),
    "result_slot": (_set("0/cell/out_slot", 0, 5), "takes output slot 5"),
    "instance_out_of_range": (_set("0/cell/instance", 0, 40), "instance 40 is out of range"),
    "token_id_too_large": (_set("0/cell/imm", 0, 1_000_000), "token id 1000000; expected a row of its embedding"),
    "token_id_negative": (_set("0/cell/imm", 0, -1), "token id -1"),
    "layout_row_out_of_range": (_set("0/layout/value_row", 0, 1 << 40), "a value is placed outside its arena"),
    "layout_arena_out_of_range": (_set("0/layout/value_arena", 0, 50), "an arena that does not exist"),
    "layout_rows_per_arena": (_replace("0/layout/arena_rows", lambda a: a[:-1]), "row counts"),
    "schedule_node_twice": (_set("0/schedule/nodes", 1, 0), "runs 2 times"),
    "schedule_not_csr": (_set("0/schedule/ptr", -1, 10_000), "batch index is not a CSR"),
    "column_dtype": (_replace("0/cell/node_type", lambda a: a.astype(np.int64)),
                     "part '0/cell/node_type' is <i8[", ),
    "column_float": (_replace("0/schedule/nodes", lambda a: a.astype(np.float64)), "expected a column of <i4"),
    "column_shape": (_replace("0/cell/instance", lambda a: np.stack([a, a])), "expected a column of <i4"),
    "column_missing": (lambda h, a: a.pop("0/schedule/nodes"), "part '0/schedule/nodes' is missing"),
    "column_unexpected": (lambda h, a: a.update({"0/cell/extra": np.zeros(1, np.int32)}),
                          "part '0/cell/extra' is unexpected"),
    "types_a_string": (lambda h, a: _mb(h).update(types="leaf"), "cell_graph's types is \"leaf\"; expected a list"),
    "batchable_an_integer": (lambda h, a: _mb(h)["types"][0].update(batchable=1),
                             "a type's batchable in mini-batch 0's cell_graph is 1; expected true or false"),
    "num_instances_a_bool": (lambda h, a: _mb(h).update(num_instances=True), "num_instances is true"),
    "num_instances_huge": (lambda h, a: _mb(h).update(num_instances=10 ** 18), "instances; expected at most"),
    "instance_without_nodes": (lambda h, a: (h.update(batch_size=3), _mb(h).update(num_instances=3)),
                               "1 of its 3 instances have no nodes"),
    "batch_size_zero": (lambda h, a: h.update(batch_size=0), "batch_size is 0; expected an integer from 1"),
    "granularity_unknown": (lambda h, a: h.update(granularity="dag"), "granularity is \"dag\"; expected cell or op"),
    "minibatches_an_object": (lambda h, a: h.update(minibatches={}), "minibatches is {}; expected a list"),
    "arena_shape_negative": (lambda h, a: h["minibatches"][0]["arenas"][0].__setitem__(0, -128),
                             "an arena shape of mini-batch 0 is -128"),
    "unknown_cell": (lambda h, a: _mb(h)["types"][0].update(cell="evil"), "names cell 'evil', which its spec lacks"),
    "made_up_op_type": (lambda h, a: _mb(h, "graph")["types"][0]["program"]["ops"][0].update(kind="exec"),
                        "is no op of the spec's cells"),
    "exec_graph_not_the_lowering": (_replace("0/exec/imm", lambda a: (a + 1) % 2),
                                    "the op-level graph is not the lowering of the cell-level graph"),
    "no_results": (lambda h, a: a.update({"0/cell/out_node": np.zeros(0, np.int32),
                                          "0/cell/out_slot": np.zeros(0, np.int32)}), "has no results"),
    "fallbacks_negative": (lambda h, a: h["minibatches"][0].update(fsm_fallbacks=-1), "fsm_fallbacks is -1"),
    "spec_text_broken": (lambda h, a: h.update(spec_text="model: [\n"), "(embedded spec):"),
}

# Forged header fields that `reencode` would rewrite (the parts themselves kept): name -> (change, message).
HEADER_FORGERIES = {
    "part_dtype_object": (lambda h: h["parts"]["0/cell/imm"].update(dtype="|O"), "has dtype \"|O\""),
    "part_shape_huge": (lambda h: h["parts"]["0/cell/imm"].update(shape=[10 ** 18]), "needs"),
    "part_offset_huge": (lambda h: h["parts"]["0/cell/imm"].update(offset=10 ** 18), "truncated: part '0/cell/imm'"),
    "part_offset_a_bool": (lambda h: h["parts"]["0/cell/imm"].update(offset=True),
                           "the offset of part '0/cell/imm' is true"),
    "parts_a_list": (lambda h: h.update(parts=[]), "the header's parts is []; expected an object"),
    "version_a_number": (lambda h: h.update(version=1.1), "bad schema version 1.1; expected \"major.minor\""),
}


def base_plan_bytes(tmp: str, limit: int = 4, granularity: str = "op") -> bytes:
    """A TreeLSTM plan of mini-batches of two synthetic trees (the same bytes every time)."""
    from edbc.api import CompileOptions, compile_plan, load_data, load_spec
    from edbc.plan import save_plan
    from edbc.settings import MODELS_DIR

    spec, text = load_spec(MODELS_DIR / "treelstm.yaml")
    plan = compile_plan(spec, text, load_data(spec, None, limit=limit, seed=1), batch_size=2,
                        options=CompileOptions("typewise", granularity))
    save_plan(plan, tmp)
    with open(tmp, "rb") as f:
        return f.read()


def forge_plan(data: bytes, name: str) -> tuple[bytes, str]:
    """The base plan with forgery `name` applied, checksums recomputed, and the expected message."""
    from edbc.plan.plan import FORMAT, MAGIC, VERSION

    if name in HEADER_FORGERIES:
        change, message = HEADER_FORGERIES[name]
        return rewrite_header(data, MAGIC, change), message
    change, message = PLAN_FORGERIES[name]
    return reencode(data, MAGIC, FORMAT, VERSION[0], change), message


# ---------------------------------------------------------------------------------------------
# Forged policies (of the shipped TreeLSTM policy: types leaf, node, classify; sorted encoding).

POLICY_FORGERIES = {
    "table_bool_id": (lambda d: d["table"][0][0].__setitem__(0, True), "a table state is true"),
    "table_float_type": (lambda d: d["table"][0].__setitem__(1, 0.0), "a table type is 0.0"),
    "table_duplicate_state": (lambda d: d["table"].append(d["table"][0]), "state [0] appears twice"),
    "table_state_repeats_a_type": (lambda d: d["table"].append([[1, 1], 1]), "[1, 1] is not a sorted state"),
    "table_a_string": (lambda d: d.update(table="[[[0], 0]]"), "table is \"[[[0], 0]]\"; expected a list"),
    "table_entry_of_three": (lambda d: d["table"][0].append(0), "entry [[0], 0, 0]; expected [state, type]"),
    "types_a_string": (lambda d: d.update(types="leaf"), "types is \"leaf\"; expected a list"),
    "types_duplicate": (lambda d: d.update(types=["leaf", "leaf", "classify"]),
                        "expected a list of distinct type names"),
    "model_a_string": (lambda d: d.update(model="treelstm"), "model is \"treelstm\"; expected an object"),
    "granularity_a_bool": (lambda d: d.update(granularity=True), "granularity is true; expected one of: cell, op, dag"),
}

# ---------------------------------------------------------------------------------------------
# Forged model checkpoints (of tests/bad_inputs/checkpoints/tiny_tree.yaml, so that they stay small).

TINY_SPEC = "tests/bad_inputs/checkpoints/tiny_tree.yaml"


def tiny_checkpoint_bytes() -> bytes:
    """`edbc init` of the tiny TreeLSTM on two trees, in memory (the same bytes every time)."""
    from edbc.api import load_spec
    from edbc.checkpoint import new_checkpoint
    from edbc.checkpoint.file import encode_checkpoint
    from edbc.data import build_vocabs, parse_ptb
    from edbc.runtime.weights import init_weights

    spec, _ = load_spec(TINY_SPEC)
    trees = [parse_ptb("(3 (2 a) (3 (4 fine) (2 film)))"), parse_ptb("(1 (2 a) (1 bad))")]
    return encode_checkpoint(new_checkpoint(spec, init_weights(spec), build_vocabs(spec, trees), None,
                                            {"command": "init", "data": "two trees"}))


def rewrite_checkpoint(data: bytes, change) -> bytes:
    """`change(tensors, metadata)` on a checkpoint's parts, saved again as valid safetensors."""
    from safetensors.torch import load, save

    length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + length])["__metadata__"]
    tensors = load(data)
    change(tensors, metadata)
    return save(tensors, metadata)


def _meta(key, value):
    return lambda tensors, meta: meta.__setitem__(key, value)


def _tensor(name, value):
    def change(tensors, meta):
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value(tensors[name]) if callable(value) else value
    return change


def _checkpoint_forgeries():
    import torch

    return {
        "other_model": (_meta("model", "treegru"), "this checkpoint is for model 'treegru', not 'tiny_tree'"),
        "other_spec_version": (_meta("spec", "0" * 64), "made for another version of model 'tiny_tree'"),
        "format_other": (_meta("format", "edbc.plan"), "format is \"edbc.plan\"; expected \"edbc.checkpoint\""),
        "version_2": (_meta("version", "2.0"), "version \"2.0\"; this edbc reads checkpoints of version 1.x"),
        "missing_tensor": (_tensor("b_out", None), "parameter 'b_out' is missing"),
        "extra_tensor": (_tensor("W_extra", torch.zeros(2)), "tensor 'W_extra' is no parameter of model"),
        "transposed_tensor": (_tensor("W_out", lambda t: t.T.contiguous()),
                              "parameter 'W_out' is float32[5, 4]; expected float32[4, 5]"),
        "nan_tensor": (_tensor("U_l", lambda t: t.index_fill(0, torch.tensor([1]), float("nan"))),
                       "parameter 'U_l' holds NaN or infinite values"),
        "int_tensor": (_tensor("b_out", lambda t: t.to(torch.int32)), "parameter 'b_out' is int32[5]"),
        "vocab_size": (_meta("vocabularies", '{"word":{"size":9,"words":["a"]}}'),
                       "vocabulary 'word' has 9 ids; the spec gives 8"),
        "vocab_not_strings": (_meta("vocabularies", '{"word":{"size":8,"words":[1,2]}}'),
                              "vocabulary 'word': its words are not 7 or fewer distinct strings"),
        "vocab_not_json": (_meta("vocabularies", "{word"), "vocabularies is not JSON"),
        "labels_too_few": (_meta("labels", '["0","1"]'), "it names 2 labels; the readout has 5 classes"),
        "labels_duplicate": (_meta("labels", '["0","0","1","2","3"]'), "labels: expected a list of distinct strings"),
    }


# ---------------------------------------------------------------------------------------------
# State dicts for `edbc import-weights` (of the tiny TreeLSTM, its parameters by their own names).

def _torch_bytes(obj) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_state_dicts(folder) -> None:
    """Broken or hostile state_dicts of the tiny TreeLSTM (cases.yaml says what each must be
    answered with)."""
    import torch

    from edbc.api import load_spec
    from edbc.runtime.weights import init_weights

    spec, _ = load_spec(TINY_SPEC)
    good = init_weights(spec)
    folder.mkdir(exist_ok=True)
    whole = _torch_bytes(good)
    files = {
        "tiny_tree.pt": whole,
        "truncated.pt": whole[:len(whole) // 2],
        "code_payload.pt": _torch_bytes({"E": _Command("touch /tmp/edbc-bad-input-unpickled")}),
        "nested.pt": _torch_bytes({"model": good, "epoch": 3}),
        "missing_tensor.pt": _torch_bytes({k: v for k, v in good.items() if k != "b_out"}),
        "extra_tensor.pt": _torch_bytes(dict(good, step=torch.zeros(3))),
        "transposed.pt": _torch_bytes(dict(good, W_out=good["W_out"].T.contiguous())),
        "integer_tensor.pt": _torch_bytes(dict(good, b_out=good["b_out"].to(torch.int64))),
        "nan.pt": _torch_bytes(dict(good, U_l=torch.full_like(good["U_l"], float("nan")))),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)


DEEP_JSON = b'{"format": "edbc.policy", "training": ' + b"[" * 5000 + b"]" * 5000 + b"}"
HUGE_INTEGER_JSON = b'{"format": "edbc.policy", "version": "1.0", "seed": ' + b"9" * 5000 + b"}"


def write_corpus() -> None:
    """The forged files of tests/bad_inputs/ (cases.yaml says what each must be answered with)."""
    import tempfile
    from pathlib import Path

    here = Path(__file__).parent / "bad_inputs"
    with tempfile.TemporaryDirectory() as tmp:
        base = base_plan_bytes(f"{tmp}/base.plan", limit=2, granularity="cell")
    for name in CORPUS_PLANS:
        (here / "plans" / f"forged_{name}.plan").write_bytes(forge_plan(base, name)[0])
    shipped = (here.parent.parent / "plans" / "treelstm.policy.json").read_text()
    for name, (change, _) in POLICY_FORGERIES.items():
        (here / "policies" / f"forged_{name}.json").write_text(rewrite_policy(shipped, change) + "\n")
    (here / "policies" / "deep_nesting.json").write_bytes(DEEP_JSON)
    (here / "policies" / "huge_integer.json").write_bytes(HUGE_INTEGER_JSON)
    (here / "checkpoints").mkdir(exist_ok=True)
    write_checkpoints(here / "checkpoints")
    write_state_dicts(here / "state_dicts")
    (here / "checkpoints" / "old_format_pickle.ckpt").write_bytes(
        old_checkpoint_with_payload("/tmp/edbc-bad-input-unpickled"))


def write_checkpoints(folder) -> None:
    """The tiny model's checkpoint and its forgeries (`python -c "from tests.forge import *;
    write_checkpoints(Path('tests/bad_inputs/checkpoints'))"` rewrites just these)."""
    tiny = tiny_checkpoint_bytes()
    (folder / "tiny_tree.safetensors").write_bytes(tiny)
    for name, (change, _) in _checkpoint_forgeries().items():
        (folder / f"forged_{name}.safetensors").write_bytes(rewrite_checkpoint(tiny, change))
    (folder / "truncated.safetensors").write_bytes(tiny[:len(tiny) // 2])
    (folder / "header_length_huge.safetensors").write_bytes(b"\xff" * 8 + tiny[8:])
    (folder / "header_not_json.safetensors").write_bytes(b"\x04" + b"\x00" * 7 + b"{abc" + tiny[8:])


# The plan forgeries of the corpus: those that apply to a cell-level plan.
CORPUS_PLANS = [n for n in [*PLAN_FORGERIES, *HEADER_FORGERIES]
                if n not in ("made_up_op_type", "exec_graph_not_the_lowering")]

if __name__ == "__main__":
    write_corpus()
