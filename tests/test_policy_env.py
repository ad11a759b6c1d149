import numpy as np
import pytest
from hypothesis import given, settings

from edbc.data.typed_dag import parse_typed_dag
from edbc.policy.encoding import TypeVocab
from edbc.policy.env import FrontierEnv
from edbc.schedule import lower_bound

from .dags import typed_dags

# Two chains of t1 (lengths 1 and 2), each feeding a t2: running t2 before the second t1
# splits the t2 nodes into two batches.
TWO_CHAINS = "5\n1 0\n1 0\n1 1 1\n2 1 0\n2 1 2\n"


def env_of(text: str, encoding: str = "sorted") -> FrontierEnv:
    g = parse_typed_dag(text)
    env = FrontierEnv([g], TypeVocab.of_graphs([g]), encoding)
    env.reset(seed=0)
    return env


def test_rewards_and_masks_on_a_hand_made_graph():
    env = env_of(TWO_CHAINS)
    assert env.action_masks().tolist() == [True, False]
    obs, reward, done, _, _ = env.step(0)  # both ready t1 nodes: as large as t1 can ever be
    assert reward == 0.0 and not done
    assert env.action_masks().tolist() == [True, True]
    assert obs.tolist() == [1, 1, 1, 0.5]  # one ready node each: the tie goes to t1 first
    _, reward, done, _, _ = env.step(1)  # one of the two t2 nodes that could run together
    assert reward == -0.5 and not done
    assert env.action_masks().tolist() == [True, False]
    _, reward, _, _, _ = env.step(0)
    assert reward == 0.0
    _, reward, done, _, info = env.step(1)
    assert reward == 0.0 and done and info["batches"] == 4


def test_waiting_earns_the_full_batch():
    env = env_of(TWO_CHAINS)
    env.step(0)
    _, r1, _, _, _ = env.step(0)
    _, r2, done, _, info = env.step(1)
    assert (r1, r2, done, info["batches"]) == (0.0, 0.0, True, 3)


def test_masked_actions_are_refused():
    env = env_of(TWO_CHAINS)
    with pytest.raises(ValueError, match="masked"):
        env.step(1)


def test_unbatchable_nodes_run_outside_the_policy():
    env = env_of("4\n0 0\n1 1 0\n1 0\n0 1 2\n")
    assert env.batches == 1  # node 0 ran at reset
    assert env.action_masks().tolist() == [True]
    _, reward, done, _, info = env.step(0)
    assert reward == 0.0 and done and info["batches"] == 3  # node 3 ran after the t1 batch


@settings(max_examples=30, deadline=None)
@given(typed_dags(max_nodes=30))
def test_every_masked_walk_schedules_the_whole_graph_with_rewards_in_range(g):
    if not any(t.batchable for t in (g.types[x] for x in np.unique(g.node_type))):
        return
    for encoding in ("sorted", "set", "max"):
        env = FrontierEnv([g], TypeVocab.of_graphs([g]), encoding)
        env.reset(seed=1)
        rng = np.random.default_rng(0)
        done, info = False, {}
        while not done:
            action = rng.choice(np.flatnonzero(env.action_masks()))
            _, reward, done, _, info = env.step(action)
            assert -1.0 < reward <= 0.0
        assert env._frontier.remaining == 0
        assert info["batches"] >= lower_bound(g)
