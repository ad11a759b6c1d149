import numpy as np
import pytest

from edbc.data.typed_dag import parse_typed_dag
from edbc.policy.encoding import TypeVocab, action_mask, observation, state_types
from edbc.schedule import frontier


def state_of(encoding, ids, counts):
    """The native frontier's state where graph type k + 1 has `counts[k]` ready nodes and vocabulary id `ids[k]`."""
    types = [k + 1 for k, c in enumerate(counts) for _ in range(c)]
    g = parse_typed_dag("\n".join([str(len(types))] + [f"{t} 0" for t in types]))
    vocab = TypeVocab(tuple(f"t{ids.index(v) + 1}" if v in ids else f"unused{v}" for v in range(max(ids) + 1)))
    return frontier(g).state(vocab.map_graph(g), encoding)


def test_the_three_encodings():
    ids, counts = [2, 0, 1], [3, 5, 3]
    assert state_of("set", ids, counts) == (0, 1, 2)
    assert state_of("sorted", ids, counts) == (0, 1, 2)  # 5 ready, then the tie 3/3 by id
    assert state_of("sorted", [2, 0], [7, 1]) == (2, 0)
    assert state_of("max", [2, 0], [7, 1]) == (0, 2, 2)
    assert state_types("max", (0, 2, 2)) == (0, 2)
    assert state_types("sorted", (2, 0)) == (2, 0)


def test_observations_are_functions_of_the_state():
    v = 4
    obs = observation("sorted", (2, 0), v)
    assert obs.tolist() == [1, 0, 1, 0, 0.75, 0, 1, 0]
    assert observation("set", (0, 2), v).tolist() == [1, 0, 1, 0]
    assert observation("max", (0, 2, 2), v).tolist() == [1, 0, 1, 0, 0, 0, 1, 0]
    # orders differ, so observations differ: the network can tell them apart
    assert not np.array_equal(observation("sorted", (0, 2), v), obs)
    assert action_mask("max", (0, 2, 2), v).tolist() == [True, False, True, False]


def test_vocabulary_maps_graph_types_by_name():
    a = parse_typed_dag("3\n1 0\n3 0\n0 0\n")  # types t0 (unbatchable), t1, t2, t3
    vocab = TypeVocab.of_graphs([a])
    assert vocab.names == ("t1", "t2", "t3")
    b = parse_typed_dag("2\n4 0\n1 0\n")
    assert vocab.map_graph(b).tolist() == [-1, 0, 1, 2, -1]  # t0 unbatchable, t4 unknown


@pytest.mark.parametrize("encoding", ["sorted", "set", "max"])
def test_mask_and_state_types_agree(encoding):
    state = state_of(encoding, [3, 1], [1, 2])
    assert np.flatnonzero(action_mask(encoding, state, 5)).tolist() == sorted(state_types(encoding, state))
