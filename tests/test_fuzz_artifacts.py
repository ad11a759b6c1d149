"""Fuzz the artifact loaders (plans, policies, checkpoints): byte flips, truncations, and forgeries whose
checksums are recomputed (any JSON value at any place of the header, nested deep or not, integers
huge or not, any number in any column). Nothing but edbc's own errors may escape, and a plan the
loader accepts runs and checks without any other error."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edbc.api import run_plan
from edbc.errors import EdbcError
from edbc.plan import load_plan
from edbc.plan.plan import FORMAT, MAGIC, VERSION
from edbc.policy.encoding import TypeVocab
from edbc.policy.file import load_policy
from edbc.policy.train import CHECKPOINT_MAGIC, _load_checkpoint, train_fsm
from edbc.settings import PLANS_DIR, PolicySettings

from .forge import base_plan_bytes, reencode, rewrite_header, rewrite_policy
from .test_policy_train import TINY, lattices  # noqa: F401 (a fixture)

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
POLICY = (PLANS_DIR / "treelstm.policy.json").read_text()


@pytest.fixture(scope="module")
def plan_bytes(tmp_path_factory):
    return base_plan_bytes(str(tmp_path_factory.mktemp("fuzz") / "base.plan"), limit=2, granularity="cell")


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


json_values = st.one_of(
    st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                 | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                 max_leaves=8),
    st.integers(1, 600).map(nested))  # deeper cannot be checksummed here; see the last test


def paths(doc, prefix=()):
    """Every place in a JSON document: a key of an object or an index of a list."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


def put(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def loads_or_refuses(path, load, run=None) -> None:
    try:
        loaded = load(path)
        if run is not None:
            run(loaded)
    except EdbcError:
        pass


def mangled_bytes(data: bytes, draw) -> bytes:
    """Some bytes flipped, or the file cut short, or both."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


def _header(data: bytes, magic: bytes = MAGIC) -> dict:
    length = int(data[len(magic):len(magic) + 12])
    return json.loads(data[len(magic) + 13:len(magic) + 13 + length])


def run_checked(plan):
    run_plan(plan, check=True)


@FUZZ
@given(data=st.data())
def test_plans_with_flipped_or_missing_bytes(plan_bytes, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "p.plan"
    path.write_bytes(mangled_bytes(plan_bytes, data.draw))
    loads_or_refuses(path, load_plan, run_checked)


@FUZZ
@given(data=st.data(), value=json_values)
def test_plans_with_any_value_anywhere_in_the_header(plan_bytes, tmp_path_factory, data, value):
    places = [p for p in paths(_header(plan_bytes)) if p[0] != "checksum"]
    where = data.draw(st.sampled_from(places))
    path = tmp_path_factory.mktemp("fuzz") / "p.plan"
    path.write_bytes(rewrite_header(plan_bytes, MAGIC, lambda head: put(head, where, value)))
    loads_or_refuses(path, load_plan, run_checked)


@FUZZ
@given(data=st.data())
def test_plans_with_any_number_in_any_column(plan_bytes, tmp_path_factory, data):
    def change(head, arrays):
        name = data.draw(st.sampled_from(sorted(k for k, a in arrays.items() if a.dtype.kind == "i" and a.size)))
        column = arrays[name]
        info = np.iinfo(column.dtype)
        column[data.draw(st.integers(0, column.size - 1))] = data.draw(
            st.one_of(st.integers(-3, 300), st.integers(info.min, info.max)))
    path = tmp_path_factory.mktemp("fuzz") / "p.plan"
    path.write_bytes(reencode(plan_bytes, MAGIC, FORMAT, VERSION[0], change))
    loads_or_refuses(path, load_plan, run_checked)


@FUZZ
@given(data=st.data())
def test_policies_with_flipped_or_missing_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "p.json"
    path.write_bytes(mangled_bytes(POLICY.encode(), data.draw))
    loads_or_refuses(path, load_policy)


@FUZZ
@given(data=st.data(), value=json_values)
def test_policies_with_any_value_anywhere(tmp_path_factory, data, value):
    places = [p for p in paths(json.loads(POLICY)) if p[0] != "checksum"]
    where = data.draw(st.sampled_from(places))
    path = tmp_path_factory.mktemp("fuzz") / "p.json"
    path.write_text(rewrite_policy(POLICY, lambda doc: put(doc, where, value)))
    loads_or_refuses(path, load_policy)


@pytest.mark.parametrize("text", [
    b'{"format": "edbc.policy", "table": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"format": "edbc.policy", "version": "1.0", "x": ' + b"7" * 10_000 + b"}",
])
def test_deep_nesting_and_huge_integers_are_refused(tmp_path, text):
    policy = tmp_path / "p.json"
    policy.write_bytes(text)
    with pytest.raises(EdbcError, match=r"not valid JSON \((nested too deeply|integer of \d+ digits)"):
        load_policy(policy)
    plan = tmp_path / "p.plan"
    plan.write_bytes(MAGIC + f"{len(text):012d}\n".encode() + text)
    with pytest.raises(EdbcError, match=r"not valid JSON \((nested too deeply|integer of \d+ digits)"):
        load_plan(plan)


@pytest.fixture(scope="module")
def checkpoint_bytes(lattices, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "run.ckpt"
    train_fsm(lattices, TypeVocab.of_graphs(lattices.train), PolicySettings(timesteps=64, **TINY), {"data": "x"},
              str(path))
    return path.read_bytes()


@FUZZ
@given(data=st.data(), value=json_values)
def test_checkpoints_with_flipped_bytes_or_any_value_anywhere(checkpoint_bytes, tmp_path_factory, data, value):
    run = _header(checkpoint_bytes, CHECKPOINT_MAGIC)["run"]
    places = [p for p in paths(_header(checkpoint_bytes, CHECKPOINT_MAGIC)) if p[0] != "checksum"]
    where = data.draw(st.sampled_from(places))
    forged = data.draw(st.sampled_from([
        mangled_bytes(checkpoint_bytes, data.draw),
        rewrite_header(checkpoint_bytes, CHECKPOINT_MAGIC, lambda head: put(head, where, value))]))
    path = tmp_path_factory.mktemp("fuzz") / "run.ckpt"
    path.write_bytes(forged)
    loads_or_refuses(str(path), lambda p: _load_checkpoint(p, run))
