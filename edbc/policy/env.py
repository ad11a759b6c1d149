"""The reinforcement-learning environment: batch the dataflow graphs of training mini-batches.

An episode schedules one graph drawn from the training set. The observation
is the encoded frontier state, an action a vocabulary type, and actions whose
type has no ready node are masked (`action_masks`, as sb3-contrib's
MaskablePPO expects). Choosing type t runs all its ready nodes and earns

    r = -1 + |F_t| / |F*_t|

(method.md §2): 0 when the batch is as large as it could ever be, so the
return is minus the number of batches plus the sum of the batch ratios.
Unbatchable nodes run outside the policy, before each decision.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..graph.ir import Graph
from ..schedule.analysis import batchable_mask
from ..schedule.frontier import frontier
from .encoding import TypeVocab, action_mask, observation, observation_size


class FrontierEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, graphs: list[Graph], vocab: TypeVocab, encoding: str):
        if not graphs:
            raise ValueError("the environment needs at least one graph")
        self.graphs = graphs
        self.vocab = vocab
        self.encoding = encoding
        self.observation_space = spaces.Box(0.0, 1.0, (observation_size(encoding, len(vocab)),), np.float32)
        self.action_space = spaces.Discrete(len(vocab))
        self._frontier = None  # the native frontier of the current episode's graph
        self._to_vocab: np.ndarray | None = None  # its types' vocabulary ids
        self._to_graph: dict[int, int] = {}  # and back
        self._state = None
        self.batches = 0  # batches of the current episode, unbatchable ones included

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        graph = self.graphs[int(self.np_random.integers(len(self.graphs)))]
        self._to_vocab = self.vocab.map_graph(graph)
        if np.any((self._to_vocab < 0) & batchable_mask(graph)):
            raise ValueError("a training graph has a type outside the vocabulary")
        self._to_graph = {v: t for t, v in enumerate(self._to_vocab.tolist()) if v >= 0}
        self._frontier = frontier(graph, track_ideal=True)
        self.batches = len(self._frontier.run_unbatchable())
        self._state = self._frontier.state(self._to_vocab, self.encoding)
        return observation(self.encoding, self._state, len(self.vocab)), {}

    def action_masks(self) -> np.ndarray:
        return action_mask(self.encoding, self._state, len(self.vocab))

    def step(self, action):
        f = self._frontier
        t = self._to_graph.get(int(action), -1)
        if t < 0 or not f.count[t]:
            raise ValueError(f"action {action} is masked: no ready node of that type")
        reward = -1.0 + float(f.count[t]) / float(f.ideal[t])
        f.run(t)
        self.batches += 1 + len(f.run_unbatchable())
        if f.done:
            self._state = ()
            return np.zeros(self.observation_space.shape, np.float32), reward, True, False, \
                {"batches": self.batches}
        self._state = f.state(self._to_vocab, self.encoding)
        return observation(self.encoding, self._state, len(self.vocab)), reward, False, False, {}
