"""Train an FSM batching policy, from the heuristics up, with stable-baselines3; distil it into a table.

Training starts where the heuristics are (`policy.search`): each frontier heuristic
is imitated into a table, the best of them on the held-out graphs is improved
by rollouts on the training graphs (`search` tries), and the network is
warm-started by cloning that table (`clone_steps` gradient steps), so that RL
improves on the best heuristic instead of climbing to it from a random start.
The learner is sb3-contrib's MaskablePPO over `FrontierEnv` (types with no
ready node are masked). Every `eval_every` PPO updates the network is
distilled into a table (`fsm.distil`, greedily, over the training graphs and
graphs of smaller mini-batches) and the table is scored on held-out graphs;
the best table so far is kept, and training stops early once it is within
`target` (1.01x) of the lower bound. A checkpoint (the network, the best
table, the history) is written atomically after every evaluation, so an
interrupted run can be resumed; a resumed run reaches the same kind of
result but not the same bytes, because the environments restart their episodes.

`train_model_policy` and `train_dag_policy` build the graph sets for a model
(sampled mini-batches of its training data) or for bare typed DAG files, run
the training and write the policy file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from ..artifact import (check_output, decode_artifact, encode_artifact, expect, expect_int, read_bytes, show,
                        write_atomic)
from ..errors import ArtifactError, UsageError, WorsePolicyError
from ..graph.ir import CELL, DAG, OP, Graph
from ..schedule.analysis import batchable_mask, lower_bound
from ..schedule.policies import HEURISTICS, POLICIES
from ..settings import SEARCH_TRIES, PolicySettings
from ..spec.model import ModelSpec
from .encoding import State, TypeVocab, action_mask, observation
from .file import DAG_MODEL, PolicyFile, parse_table, save_policy
from .fsm import Fsm, distil, fsm_schedule
from .search import imitate, improve

ALGORITHM = "MaskablePPO"
BASELINES = ("depth", "agenda", "typewise")

Progress = Callable[[int, int, float | None], None]  # (timesteps done, timesteps in all, best ratio)


@dataclass(frozen=True, eq=False)
class GraphSets:
    train: list[Graph]  # episodes are drawn from these
    heldout: list[Graph]  # scores the tables; picks the best one
    extra: list[Graph] = field(default_factory=list)  # distilled over too: smaller mini-batches


@dataclass(frozen=True)
class Evaluation:
    stage: str  # what made the table: "imitate agenda", "imitate typewise", "search", "ppo"
    timesteps: int
    batches: int
    lower_bound: int
    fallbacks: int
    states: int  # size of the table

    @property
    def ratio(self) -> float:
        return self.batches / max(self.lower_bound, 1)

    def better_than(self, other: "Evaluation | None") -> bool:
        return other is None or (self.batches, self.fallbacks) < (other.batches, other.fallbacks)


@dataclass(frozen=True, eq=False)
class TrainResult:
    fsm: Fsm
    timesteps: int
    best: Evaluation
    history: list[Evaluation]


def evaluate(fsm: Fsm, graphs: list[Graph], timesteps: int = 0, stage: str = "ppo") -> Evaluation:
    results = [fsm_schedule(g, fsm) for g in graphs]
    return Evaluation(stage, timesteps, sum(r.schedule.num_batches for r in results),
                      sum(lower_bound(g) for g in graphs), sum(r.fallbacks for r in results), len(fsm.table))


# ---------------------------------------------------------------------------------------------
# Checkpoints. Nothing in one is unpickled (stable-baselines3's own zip would be, and a file can be
# forged with valid checksums): the tensors of the network and of its optimizer are one safetensors
# part, everything else is JSON (timesteps done, the best table, the history), and the network is
# rebuilt from the settings, which must be the run's, before the tensors are checked and loaded.
# The rebuilt model is seeded from the settings, as stable-baselines3's loader reseeded a loaded
# one, so no RNG state is saved and resuming from the same checkpoint gives the same run.

CHECKPOINT_MAGIC = b"EDBC-CHECKPOINT\n"
CHECKPOINT_FORMAT = "edbc.policy-checkpoint"
CHECKPOINT_VERSION = (2, 0)  # 2.0: safetensors and JSON; 1.x held a stable-baselines3 zip, which unpickles
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")  # what torch's Adam, stable-baselines3's optimizer, keeps


def _network_tensors(model) -> dict[str, torch.Tensor]:
    tensors = {f"policy/{k}": v for k, v in model.policy.state_dict().items()}
    for index, state in model.policy.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer/{index}/{k}": v for k, v in state.items()})
    return tensors


def _expected_tensors(model) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor a checkpoint of `model`'s run holds."""
    expected = {f"policy/{k}": (tuple(v.shape), v.dtype) for k, v in model.policy.state_dict().items()}
    params = [p for group in model.policy.optimizer.param_groups for p in group["params"]]
    for index, p in enumerate(params):
        for name in _ADAM_STATE:
            expected[f"optimizer/{index}/{name}"] = ((), torch.float32) if name == "step" else (tuple(p.shape), p.dtype)
    return expected


def _save_checkpoint(path: str, run: dict, model, best_table: dict[State, int], history: list[Evaluation],
                     inputs: Sequence[str | None]) -> None:
    from safetensors.torch import save

    header = {"run": run, "timesteps": int(model.num_timesteps),
              "best_table": [[list(s), a] for s, a in sorted(best_table.items())],
              "history": [asdict(e) for e in history]}
    tensors = np.frombuffer(save(_network_tensors(model)), dtype=np.uint8)
    write_atomic(path, encode_artifact(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, header,
                                       {"tensors": tensors}), inputs)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    timesteps: int
    best_table: dict[State, int]
    history: list[Evaluation]
    tensors: dict[str, torch.Tensor]


def _load_checkpoint(path: str, run: dict) -> Checkpoint:
    fail = _checkpoint_failer(path)
    head, arrays = decode_artifact(path, read_bytes(path, "checkpoint"), CHECKPOINT_MAGIC, CHECKPOINT_FORMAT,
                                   CHECKPOINT_VERSION[0])
    theirs = head.get("run", {})
    theirs = theirs if isinstance(theirs, dict) else {}
    differ = sorted(k for k in set(run) | set(theirs) if run.get(k) != theirs.get(k))
    if differ:
        fail(f"the checkpoint belongs to another training run ({', '.join(differ)} differ); "
             "run without --resume to start afresh")
    settings = run["settings"]
    history = [_evaluation(e, fail) for e in expect(head.get("history"), list, "history", fail)]
    return Checkpoint(expect_int(head.get("timesteps"), "timesteps", fail),
                      parse_table(head.get("best_table"), len(run["types"]), settings["encoding"], fail),
                      history, _read_tensors(arrays.get("tensors"), fail))


def _evaluation(entry, fail) -> Evaluation:
    names = [f.name for f in fields(Evaluation)]
    if type(entry) is not dict or sorted(entry) != sorted(names):
        fail(f"corrupt history: entry {show(entry)}; expected an object of {', '.join(names)}")
    return Evaluation(expect(entry["stage"], str, "history's stage", fail),
                      **{k: expect_int(entry[k], f"history's {k}", fail) for k in names if k != "stage"})


def _read_tensors(blob, fail) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1:
        fail("corrupt checkpoint: the part 'tensors' is missing or not bytes; expected safetensors")
    try:
        return load(blob.tobytes())
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError):
        fail("corrupt checkpoint: the part 'tensors' is not a safetensors document")


def _restore(model, checkpoint: Checkpoint, path: str) -> None:
    """Load the checkpoint's tensors into `model`, built afresh from the run's settings, once every
    one is there with its shape, dtype and finite values."""
    tensors = checkpoint.tensors
    _check_tensors(tensors, _expected_tensors(model), _checkpoint_failer(path))
    model.policy.load_state_dict({k[len("policy/"):]: v for k, v in tensors.items() if k.startswith("policy/")})
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/")
            state.setdefault(int(index), {})[key] = t
    optimizer = model.policy.optimizer
    # The hyperparameters come from the settings, never from the file.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    model.num_timesteps = checkpoint.timesteps


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict, fail) -> None:
    if set(tensors) != set(expected):
        odd = sorted(set(tensors) ^ set(expected))[0]
        fail(f"corrupt checkpoint: tensor {odd} is {'unexpected' if odd in tensors else 'missing'}; "
             f"expected the {len(expected)} tensors of the network and its optimizer")
    for name, (shape, dtype) in sorted(expected.items()):
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            fail(f"corrupt checkpoint: tensor {name} is {_dtype_name(t.dtype)}{list(t.shape)}; "
                 f"expected {_dtype_name(dtype)}{list(shape)}")
        if not bool(torch.isfinite(t).all()):
            fail(f"corrupt checkpoint: tensor {name} holds NaN or infinite values; expected finite numbers")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _checkpoint_failer(path: str):
    def fail(message: str):
        raise ArtifactError(message, path=path)
    return fail


def train_fsm(graphs: GraphSets, vocab: TypeVocab, settings: PolicySettings, run: dict | None = None,
              checkpoint: str | None = None, resume: bool = False, progress: Progress | None = None,
              inputs: Sequence[str | None] = (), subprocess_envs: bool = False) -> TrainResult:
    """Train with MaskablePPO on `graphs.train`; return the best distilled table.

    `run` identifies the training run in the checkpoint (model, data, settings
    other than the number of timesteps): `resume` refuses a checkpoint of
    another run, and may go on with more timesteps than the first run had.
    The checkpoint never overwrites `inputs`. `subprocess_envs` steps each
    environment in a subprocess of its own (stable-baselines3's SubprocVecEnv):
    the same episodes and result, and slower on few cores (README).
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from .env import FrontierEnv

    if resume and checkpoint is None:
        raise UsageError("--resume needs a checkpoint to resume from")
    run = dict(run or {}, types=list(vocab.names),
               settings={k: v for k, v in settings.to_json().items() if k != "timesteps"})
    enc = settings.encoding
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network: one thread is fastest, and results do not depend on the machine
    env = None
    try:
        set_random_seed(settings.seed)
        make_env = partial(FrontierEnv, graphs.train, vocab, enc)
        env = (SubprocVecEnv if subprocess_envs else DummyVecEnv)([make_env] * settings.n_envs)
        history: list[Evaluation] = []
        best: Evaluation | None = None
        best_table: dict[State, int] = {}
        saved = _load_checkpoint(checkpoint, run) if resume else None
        model = MaskablePPO("MlpPolicy", env, n_steps=settings.n_steps, batch_size=settings.batch_size,
                            n_epochs=settings.n_epochs, learning_rate=settings.learning_rate,
                            gamma=settings.gamma, ent_coef=settings.ent_coef, seed=settings.seed,
                            policy_kwargs={"net_arch": list(settings.net_arch)}, device="cpu", verbose=0)
        if saved is not None:
            _restore(model, saved, checkpoint)
            history, best_table = saved.history, saved.best_table
            best = min(history, key=lambda e: (e.batches, e.fallbacks, e.timesteps)) if history else None
        elif settings.warm_start == "imitate":
            best, best_table = _warm_start(model, graphs, vocab, settings, history)

        def choose(state: State) -> int:
            action, _ = model.predict(observation(enc, state, len(vocab)),
                                      action_masks=action_mask(enc, state, len(vocab)), deterministic=True)
            return int(action)

        def checkpoint_and_report():
            if checkpoint is not None:
                _save_checkpoint(checkpoint, run, model, best_table, history, inputs)
            if progress is not None:
                progress(model.num_timesteps, settings.timesteps, best.ratio if best else None)

        def evaluate_now():
            nonlocal best, best_table
            table = distil(choose, graphs.train + graphs.extra, vocab, enc)
            e = evaluate(Fsm(vocab, enc, table), graphs.heldout, int(model.num_timesteps), "ppo")
            history.append(e)
            if e.better_than(best):
                best, best_table = e, table

        class Report(BaseCallback):
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                if progress is not None:
                    progress(self.num_timesteps, settings.timesteps, best.ratio if best else None)

        if saved is None and best is not None:
            checkpoint_and_report()
        per_update = settings.n_steps * settings.n_envs
        while model.num_timesteps < settings.timesteps and (best is None or best.ratio > settings.target):
            left = settings.timesteps - model.num_timesteps
            model.learn(min(settings.eval_every * per_update, left), callback=Report(), reset_num_timesteps=False)
            evaluate_now()
            checkpoint_and_report()
        if best is None:
            raise UsageError("the checkpoint has no evaluation yet; run without --resume")
        return TrainResult(Fsm(vocab, enc, best_table), int(model.num_timesteps), best, history)
    finally:
        if env is not None:
            env.close()  # ends the subprocesses
        torch.set_num_threads(threads)


def _warm_start(model, graphs: GraphSets, vocab: TypeVocab, settings: PolicySettings,
                history: list[Evaluation]) -> tuple[Evaluation, dict[State, int]]:
    """Imitate every frontier heuristic, search from the best imitation, clone the best table into
    `model`'s network; the tables' evaluations go to `history`. Returns the best and its table."""
    enc = settings.encoding
    best: Evaluation | None = None
    best_table: dict[State, int] = {}
    for heuristic in HEURISTICS:
        table = imitate(heuristic, graphs.train + graphs.extra, vocab, enc)
        e = evaluate(Fsm(vocab, enc, table), graphs.heldout, 0, f"imitate {heuristic}")
        history.append(e)
        if e.better_than(best):
            best, best_table = e, table
    if settings.search and best.ratio > settings.target:
        table, _ = improve(best_table, graphs.train, vocab, enc, settings.search)
        e = evaluate(Fsm(vocab, enc, table), graphs.heldout, 0, "search")
        history.append(e)
        if e.better_than(best):
            best, best_table = e, table
    _clone(model, best_table, vocab, enc, settings.clone_steps)
    return best, best_table


def _clone(model, table: dict[State, int], vocab: TypeVocab, encoding: str, steps: int) -> None:
    """Behaviour cloning: fit the policy network to `table`'s choices (cross-entropy over the legal
    types), so that PPO's first rollouts already batch like the table."""
    if not table or not steps:
        return
    states = sorted(table)
    obs = torch.as_tensor(np.stack([observation(encoding, s, len(vocab)) for s in states]))
    masks = np.stack([action_mask(encoding, s, len(vocab)) for s in states])
    actions = torch.as_tensor([table[s] for s in states])
    policy = model.policy
    policy.set_training_mode(True)
    for _ in range(steps):
        values, log_prob, _ = policy.evaluate_actions(obs, actions, action_masks=masks)
        # The value head is left as it is, but given (zero) gradients: Adam then holds a state for every
        # parameter, which a checkpoint written before PPO's first update must have.
        loss = -log_prob.mean() + 0.0 * values.sum()
        policy.optimizer.zero_grad()
        loss.backward()
        policy.optimizer.step()
    policy.set_training_mode(False)


# ---------------------------------------------------------------------------------------------
# Graph sets and policy files for models and for bare typed DAGs.

DISTIL_BATCH_SIZES = (1, 4, 16)  # extra mini-batch sizes distilled over, besides the training size
# Sampled mini-batches (training, held-out, extra of each smaller size) by granularity: op-level
# graphs are ten times larger, and every evaluation rolls the network over all of them.
GRAPH_COUNTS = {CELL: (64, 16, 8), OP: (16, 8, 2)}


def _sampled_graphs(spec: ModelSpec, instances: list, batch_size: int, count: int, granularity: str,
                    rng: np.random.Generator) -> list[Graph]:
    from ..graph import graph_at

    size = min(batch_size, len(instances))
    picks = [rng.choice(len(instances), size=size, replace=False) for _ in range(count)]
    return [graph_at(spec, [instances[i] for i in np.sort(pick)], granularity) for pick in picks]


def model_graph_sets(spec: ModelSpec, train: list, heldout: list, batch_size: int, granularity: str,
                     seed: int) -> GraphSets:
    """Sampled mini-batches (`GRAPH_COUNTS`): of the training instances, of the held-out ones,
    and of each smaller size in `DISTIL_BATCH_SIZES` from the training instances."""
    if not train or not heldout:
        raise UsageError("training needs at least one training and one held-out instance")
    num_train, num_heldout, num_extra = GRAPH_COUNTS[granularity]
    rng = np.random.default_rng(seed)
    sets = GraphSets(_sampled_graphs(spec, train, batch_size, num_train, granularity, rng),
                     _sampled_graphs(spec, heldout, batch_size, num_heldout, granularity, rng))
    for b in DISTIL_BATCH_SIZES:
        if b < batch_size:
            sets.extra.extend(_sampled_graphs(spec, train, b, num_extra, granularity, rng))
    return sets


def _figures(result: TrainResult, graphs: GraphSets, batch_size: int | None, held_out: bool) -> dict:
    held = graphs.heldout
    best = result.best
    baselines = {p: sum(POLICIES[p](g).num_batches for g in held) for p in BASELINES}
    best_heuristic = min(BASELINES, key=lambda p: (baselines[p], BASELINES.index(p)))
    return {
        "heldout": {
            "held_out": held_out,  # false: scored on the training graphs (no held-out graphs were given)
            "graphs": len(held), "batch_size": batch_size, "nodes": sum(g.num_nodes for g in held),
            "batches": best.batches, "lower_bound": best.lower_bound, "ratio": round(best.ratio, 4),
            "fallbacks": best.fallbacks, "baselines": baselines, "best_heuristic": best_heuristic,
            "fewer_than_best_heuristic": baselines[best_heuristic] - best.batches,
        },
        "table_states": len(result.fsm.table),
        "distilled_over_graphs": len(graphs.train) + len(graphs.extra),
        "best_at_timesteps": best.timesteps,
        "best_from": best.stage,
        "evaluations": [[e.stage, e.timesteps, e.batches] for e in result.history],
    }


def _refuse_worse(figures: dict, allow_worse: bool) -> None:
    """No policy that batches worse than the best heuristic is written unless asked for."""
    f = figures["heldout"]
    if f["fewer_than_best_heuristic"] < 0 and not allow_worse:
        scored = "held-out" if f["held_out"] else "training"
        raise WorsePolicyError(
            f"the trained policy needs {f['batches']} batches on the {f['graphs']} {scored} graphs, more than "
            f"{f['best_heuristic']}'s {f['baselines'][f['best_heuristic']]}; not written: train longer "
            "(--timesteps, --search) or pass --allow-worse to write it anyway")


def _training(settings: PolicySettings, result: TrainResult, extra: dict) -> dict:
    import sb3_contrib
    import stable_baselines3

    return dict(extra, algorithm=ALGORITHM, settings=settings.to_json(), timesteps_trained=result.timesteps,
                libraries={"stable_baselines3": stable_baselines3.__version__,
                           "sb3_contrib": sb3_contrib.__version__, "torch": torch.__version__.split("+")[0]})


def train_model_policy(spec: ModelSpec, train, heldout, batch_size: int, granularity: str,
                       settings: PolicySettings, output: str, checkpoint: str | None = None,
                       resume: bool = False, progress: Progress | None = None,
                       inputs: Sequence[str | None] = (), subprocess_envs: bool = False,
                       allow_worse: bool = False) -> PolicyFile:
    """Train a policy for `spec` on `train` (an `api.Dataset`), score it on `heldout`, write `output`;
    a policy worse than the best heuristic on `heldout` is refused (`WorsePolicyError`) unless
    `allow_worse`. `inputs` (the spec and data files) are never overwritten by the output or the
    checkpoint."""
    _check_outputs(output, checkpoint, inputs)
    if granularity not in (CELL, OP):
        raise UsageError(f"unknown granularity '{granularity}'; expected one of: {CELL}, {OP}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    graphs = model_graph_sets(spec, train.instances, heldout.instances, batch_size, granularity, settings.seed)
    settings = _with_search(settings, granularity)
    vocab = TypeVocab.of_graphs(graphs.train)
    data = {"train": train.source, "train_digest": train.digest, "heldout": heldout.source,
            "heldout_digest": heldout.digest, "batch_size": batch_size}
    run = {"model": spec.name, "spec_digest": spec.digest, "granularity": granularity, "data": data}
    result = train_fsm(graphs, vocab, settings, run, checkpoint, resume, progress, (*inputs, output), subprocess_envs)
    figures = _figures(result, graphs, batch_size, True)
    _refuse_worse(figures, allow_worse)
    policy = PolicyFile(spec.name, spec.digest, granularity, result.fsm,
                        _training(settings, result, {"data": data, "graphs": len(graphs.train)}), figures)
    save_policy(policy, output, (*inputs, checkpoint))
    return policy


def train_dag_policy(train_paths: list[str], heldout_paths: list[str], settings: PolicySettings, output: str,
                     checkpoint: str | None = None, resume: bool = False,
                     progress: Progress | None = None, subprocess_envs: bool = False,
                     allow_worse: bool = False) -> PolicyFile:
    """Train a policy on bare typed DAG files; held-out files score it (the training files when none,
    and the figures say so). Refused as `train_model_policy`, unless `allow_worse`."""
    from ..artifact import file_digest
    from ..data.typed_dag import read_typed_dag

    if not train_paths:
        raise UsageError("--graphs needs at least one typed DAG file")
    inputs = (*train_paths, *heldout_paths)
    _check_outputs(output, checkpoint, inputs)
    train = [g for g in map(read_typed_dag, train_paths) if np.any(batchable_mask(g)[g.node_type])]
    if not train:
        raise UsageError("the training graphs have no batchable node; there is nothing to learn")
    graphs = GraphSets(train, [read_typed_dag(p) for p in heldout_paths or train_paths])
    settings = _with_search(settings, DAG)
    vocab = TypeVocab.of_graphs(graphs.train)
    data = {"train": [file_digest(p) for p in train_paths],
            "heldout": [file_digest(p) for p in heldout_paths or train_paths]}
    run = {"model": DAG_MODEL, "spec_digest": None, "granularity": DAG, "data": data}
    result = train_fsm(graphs, vocab, settings, run, checkpoint, resume, progress, (*inputs, output), subprocess_envs)
    figures = _figures(result, graphs, None, bool(heldout_paths))
    _refuse_worse(figures, allow_worse)
    policy = PolicyFile(DAG_MODEL, None, DAG, result.fsm,
                        _training(settings, result, {"data": data, "graphs": len(graphs.train)}), figures)
    save_policy(policy, output, (*inputs, checkpoint))
    return policy


def _with_search(settings: PolicySettings, granularity: str) -> PolicySettings:
    return settings if settings.search is not None else replace(settings, search=SEARCH_TRIES[granularity])


def _check_outputs(output: str, checkpoint: str | None, inputs: Sequence[str | None]) -> None:
    """Refuse before training, not after it, an output or checkpoint that would overwrite an input
    or each other (the writes check again)."""
    check_output(output, (*inputs, checkpoint))
    if checkpoint is not None:
        check_output(checkpoint, (*inputs, output))


def default_checkpoint(output: str) -> str:
    """`plans/x.policy.json` -> `plans/x.policy.ckpt`."""
    return (output[:-len(".json")] if output.endswith(".json") else output) + ".ckpt"

