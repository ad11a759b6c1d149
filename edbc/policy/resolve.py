"""`--policy` resolved: a name or a policy file's path becomes a `BatchingPolicy`.

A policy is a heuristic of `edbc.schedule.POLICIES`, the exact search
(`optimal`), or a learned FSM read from a policy file: the model's own (`fsm`:
beside the spec, else shipped in `plans/`) or one given by path.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import PolicyWarning, UsageError
from ..graph.ir import CELL, DAG, Graph
from ..schedule import Schedule, schedule
from ..schedule.policies import POLICIES
from ..settings import PLANS_DIR
from ..spec.model import ModelSpec
from .file import DAG_MODEL, PolicyFile, check_policy, load_policy
from .fsm import fsm_schedule
from .optimal import optimal_schedule

POLICY_NAMES = (*POLICIES, "fsm", "optimal")


@dataclass(frozen=True, eq=False)
class BatchingPolicy:
    """A resolved `--policy`: a heuristic of `POLICIES`, the exact search, or a learned FSM."""

    name: str  # what reports and plans call it: "agenda", "optimal", "fsm", ...
    policy_file: PolicyFile | None = None  # the FSM's table, for "fsm"
    path: str | None = None  # where the policy file was read

    @property
    def digest(self) -> str | None:
        """The policy file's checksum, which plans and reports record."""
        return self.policy_file.digest if self.policy_file is not None else None

    def schedule(self, graph: Graph) -> tuple[Schedule, int]:
        """The schedule of `graph`, and how many FSM steps the table could not decide."""
        if self.policy_file is not None:
            result = fsm_schedule(graph, self.policy_file.fsm)
            return result.schedule, result.fallbacks
        if self.name == "optimal":
            return optimal_schedule(graph), 0
        return schedule(graph, self.name), 0


def _policy_name(stem: str, granularity: str) -> str:
    level = "" if granularity == CELL else f".{granularity}"
    return f"{stem}{level}.policy.json"


def shipped_policy_path(model: str, granularity: str) -> Path:
    """Where the policy shipped for `model` at `granularity` lives (it may not exist)."""
    return PLANS_DIR / _policy_name(model, granularity)


def spec_policy_path(spec_path: str, granularity: str) -> Path:
    """Where a policy for the spec file at `spec_path` lives beside it: `<stem>.policy.json` at cell
    level, `<stem>.op.policy.json` at op level (it may not exist)."""
    path = Path(spec_path)
    return path.with_name(_policy_name(path.stem, granularity))


def model_policy_path(spec: ModelSpec, granularity: str) -> Path | None:
    """The policy `fsm` means for `spec`: the one beside its file, else the one shipped for its
    model name; None where neither exists."""
    candidates = ([spec_policy_path(spec.path, granularity)] if spec.path else []) + \
        [shipped_policy_path(spec.name, granularity)]
    return next((p for p in candidates if p.is_file()), None)


def check_policy_name(policy: "str | BatchingPolicy | None") -> None:
    """Names a mistaken `--policy` before any work (a policy file is read by `resolve_policy`)."""
    if isinstance(policy, str) and policy not in POLICY_NAMES and not is_policy_path(policy):
        raise UsageError(f"unknown policy '{policy}'; expected one of: {', '.join(POLICY_NAMES)}, "
                         "or a policy file")


def resolve_policy(policy: "str | BatchingPolicy | None", spec: ModelSpec | None,
                   granularity: str) -> BatchingPolicy:
    """`policy` is a name of `POLICY_NAMES`, a policy file's path, or None: `fsm` where the model has
    a policy at this granularity (`model_policy_path`), else `agenda`; where that policy was trained
    for another version of the spec (other dimensions, a readout reading elsewhere: an edited copy
    of a bundled spec), its table is of no use, so a `PolicyWarning` says so and `typewise` batches
    instead. `fsm` or a path given explicitly fails on such a policy. `spec` None means bare typed DAGs."""
    if isinstance(policy, BatchingPolicy):
        return policy
    check_policy_name(policy)
    if policy is None:
        own = model_policy_path(spec, granularity) if spec is not None else None
        if own is None:
            return BatchingPolicy("agenda")
        if _load_policy(own).spec_digest != spec.digest:
            warnings.warn(f"{own}: this policy was trained for another version of model '{spec.name}' (its spec "
                          f"digest differs), so typewise batches instead; train one for this spec with "
                          f"`edbc train-policy` and save it as {_policy_beside(spec, granularity)}",
                          PolicyWarning, stacklevel=2)
            return BatchingPolicy("typewise")
        policy = "fsm"
    if policy in POLICIES or policy == "optimal":
        return BatchingPolicy(policy)
    if policy == "fsm":
        if spec is None:
            raise UsageError("--policy fsm: bare typed DAGs have no shipped policy; train one with "
                             "`edbc train-policy --graphs FILE... -o P` and give --policy P")
        path = model_policy_path(spec, granularity)
        if path is None:
            raise UsageError(f"--policy fsm: no policy is shipped for model '{spec.name}' at {granularity} level "
                             f"({shipped_policy_path(spec.name, granularity)}) and none is beside the spec "
                             f"({_policy_beside(spec, granularity)}); train one with `edbc train-policy` and give "
                             "its path or save it there")
    else:
        path = Path(policy)
    loaded = _load_policy(path)
    check_policy(loaded, str(path), spec.name if spec is not None else DAG_MODEL,
                 spec.digest if spec is not None else None, DAG if spec is None else granularity)
    return BatchingPolicy("fsm", loaded, str(path))


def _policy_beside(spec: ModelSpec, granularity: str) -> str:
    return str(spec_policy_path(spec.path, granularity)) if spec.path else "<spec stem>.policy.json"


def _load_policy(path: Path) -> PolicyFile:
    """`load_policy`, memoised while the file is unchanged: compiling many mini-batches with one
    policy must not parse the file each time."""
    try:
        stat = path.stat()
    except OSError:
        return load_policy(path)  # raises the error that names the problem
    return _load_policy_of(str(path), str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_policy_of(path: str, resolved: str, mtime_ns: int, size: int) -> PolicyFile:
    return load_policy(path)


def is_policy_path(policy: str) -> bool:
    return "/" in policy or policy.endswith(".json") or Path(policy).is_file()
