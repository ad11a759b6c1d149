"""Why MaskablePPO: the same training budget with sb3 algorithms that cannot mask actions.

On the lattice LSTM's graphs (the case where the policy matters), train
with MaskablePPO (sb3-contrib, invalid types masked), PPO and DQN (stable-baselines3,
no masking: choosing a type with no ready node costs -1 and changes nothing). All
are distilled the same way, greedily over the allowed types, every `--eval-every`
updates (4096 steps at cell level); the best table on the held-out graphs is kept. Prints held-out batches of the
best table after each budget, and the share of invalid choices the unmasked
learners made during training.

    python scripts/compare_algorithms.py [--timesteps 100000] [--seed 0] [--granularity cell]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import load_spec, training_data  # noqa: E402
from edbc.policy.encoding import TypeVocab, action_mask, observation  # noqa: E402
from edbc.policy.env import FrontierEnv  # noqa: E402
from edbc.policy.fsm import Fsm, distil  # noqa: E402
from edbc.policy.train import evaluate, model_graph_sets, train_fsm  # noqa: E402
from edbc.schedule import POLICIES  # noqa: E402
from edbc.settings import MODELS_DIR, SHARED_DATA, SHARED_SPLITS, PolicySettings  # noqa: E402


class Unmasked(FrontierEnv):
    """FrontierEnv for learners without masking: an invalid choice costs -1 and is a no-op."""

    invalid = 0
    steps = 0

    def step(self, action):
        Unmasked.steps += 1
        if not self.action_masks()[int(action)]:
            Unmasked.invalid += 1
            return observation(self.encoding, self._state, len(self.vocab)), -1.0, False, False, {}
        return super().step(action)


def train_unmasked(algorithm: str, graphs, vocab, settings: PolicySettings, steps_between: int):
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = DummyVecEnv([lambda: Unmasked(graphs.train, vocab, settings.encoding) for _ in range(settings.n_envs)])
    if algorithm == "PPO":
        model = PPO("MlpPolicy", env, n_steps=settings.n_steps, batch_size=settings.batch_size,
                    n_epochs=settings.n_epochs, learning_rate=settings.learning_rate, gamma=settings.gamma,
                    ent_coef=settings.ent_coef, seed=settings.seed, device="cpu",
                    policy_kwargs={"net_arch": list(settings.net_arch)})

        def scores(obs):
            return model.policy.get_distribution(obs).distribution.logits
    else:
        model = DQN("MlpPolicy", env, learning_rate=settings.learning_rate, gamma=settings.gamma,
                    seed=settings.seed, device="cpu", learning_starts=1000,
                    policy_kwargs={"net_arch": list(settings.net_arch)})

        def scores(obs):
            return model.q_net(obs)

    def choose(state):
        obs = torch.as_tensor(observation(settings.encoding, state, len(vocab)))[None]
        with torch.no_grad():
            s = scores(obs)[0].numpy()
        s[~action_mask(settings.encoding, state, len(vocab))] = -np.inf
        return int(np.argmax(s))

    best = None
    while model.num_timesteps < settings.timesteps:
        model.learn(steps_between, reset_num_timesteps=False)
        table = distil(choose, graphs.train + graphs.extra, vocab, settings.encoding)
        e = evaluate(Fsm(vocab, settings.encoding, table), graphs.heldout, model.num_timesteps)
        if e.better_than(best):
            best = e
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--granularity", default="cell", choices=["cell", "op"])
    parser.add_argument("--eval-every", type=int, default=2, help="updates of 2048 steps between evaluations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec, _ = load_spec(MODELS_DIR / "lattice_lstm.yaml")
    train_split, dev_split, _ = SHARED_SPLITS[spec.kind]
    train, held = training_data(spec, str(SHARED_DATA / train_split), str(SHARED_DATA / dev_split))
    graphs = model_graph_sets(spec, train.instances, held.instances, 64, args.granularity, args.seed)
    vocab = TypeVocab.of_graphs(graphs.train)
    base = {p: sum(POLICIES[p](g).num_batches for g in graphs.heldout) for p in ("agenda", "typewise")}
    print(f"lattice_lstm, {args.granularity} level, seed {args.seed}, {len(graphs.heldout)} held-out mini-batches "
          f"of 64: agenda {base['agenda']}, typewise {base['typewise']} batches\n")
    print("| algorithm | masking | best held-out batches | at timesteps | invalid choices | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    # From a random network, as the unmasked learners start: the comparison is of the RL algorithms.
    settings = PolicySettings(timesteps=args.timesteps, seed=args.seed, eval_every=args.eval_every, target=0.0,
                              warm_start="none")
    steps_between = args.eval_every * settings.n_steps * settings.n_envs
    t0 = time.perf_counter()
    r = train_fsm(graphs, vocab, settings)
    print(f"| MaskablePPO | yes | {r.best.batches} | {r.best.timesteps} | 0 | {time.perf_counter() - t0:.0f} |",
          flush=True)
    for algorithm in ("PPO", "DQN"):
        Unmasked.invalid = Unmasked.steps = 0
        t0 = time.perf_counter()
        best = train_unmasked(algorithm, graphs, vocab, settings, steps_between)
        share = Unmasked.invalid / max(Unmasked.steps, 1)
        print(f"| {algorithm} | no (invalid: -1, no-op) | {best.batches} | {best.timesteps} | {share:.1%} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
