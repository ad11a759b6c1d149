"""Policy files: a trained FSM table as versioned, checksummed JSON.

    {"format": "edbc.policy", "version": "1.0",
     "model": {"name": ..., "spec_digest": ...},    # spec_digest null for bare typed DAGs
     "granularity": "cell" | "op" | "dag",
     "types": [...], "encoding": "sorted",
     "table": [[[state...], action], ...],          # vocabulary ids, states in sorted order
     "training": {...}, "figures": {...},
     "checksum": sha256 of the canonical JSON of everything else}

Files are written atomically and deterministically (sorted keys, no
timestamps), so the same inputs and seed give the same bytes. A reader
refuses another major version, a bad checksum, a malformed table, and (in
`check_policy`) a policy trained for another model or granularity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .. import __version__
from ..artifact import _canonical as canonical_json, check_document, read_bytes, write_atomic
from ..inputs import load_json
from ..errors import ArtifactError
from ..graph.ir import DAG
from .encoding import ENCODINGS, TypeVocab, state_types
from .fsm import Fsm

FORMAT = "edbc.policy"
VERSION = (1, 0)
DAG_MODEL = "typed-dag"  # the model name of policies for bare typed DAGs


@dataclass(frozen=True, eq=False)
class PolicyFile:
    model: str
    spec_digest: str | None  # `ModelSpec.digest`; None for bare typed DAGs
    granularity: str
    fsm: Fsm
    training: dict = field(default_factory=dict)  # seed, timesteps, algorithm, settings
    figures: dict = field(default_factory=dict)  # batches against the lower bound on held-out graphs, ...

    def document(self) -> dict:
        """The JSON document, checksum included."""
        doc = {
            "format": FORMAT,
            "version": f"{VERSION[0]}.{VERSION[1]}",
            "edbc": __version__,
            "model": {"name": self.model, "spec_digest": self.spec_digest},
            "granularity": self.granularity,
            "types": list(self.fsm.vocab.names),
            "encoding": self.fsm.encoding,
            "table": [[list(s), a] for s, a in sorted(self.fsm.table.items())],
            "training": self.training,
            "figures": self.figures,
        }
        doc["checksum"] = hashlib.sha256(canonical_json(doc)).hexdigest()
        return doc

    @cached_property
    def digest(self) -> str:
        return self.document()["checksum"]


def save_policy(policy: PolicyFile, path: str | Path) -> None:
    write_atomic(path, (_pretty(policy.document()) + "\n").encode())


def _pretty(obj, indent: str = "") -> str:
    """JSON with sorted keys, an object's members one a line and a list of lists one inner
    list a line (the table: one state a line)."""
    if isinstance(obj, dict) and obj:
        inner = indent + " "
        members = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_pretty(obj[k], inner)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(members) + f"\n{indent}}}"
    if isinstance(obj, list) and obj and all(isinstance(x, list) for x in obj):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + json.dumps(x, ensure_ascii=False) for x in obj) + f"\n{indent}]"
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def load_policy(path: str | Path) -> PolicyFile:
    path = str(path)

    def fail(message: str):
        raise ArtifactError(message, path=path)

    data = read_bytes(path, "policy")
    try:
        doc = load_json(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail("corrupt or truncated: not valid JSON; expected an edbc policy file")
    if not isinstance(doc, dict):
        fail(f"not an {FORMAT} file: the document is not a JSON object")
    check_document(doc, FORMAT, VERSION[0], fail)
    try:
        vocab = TypeVocab(tuple(str(n) for n in doc["types"]))
        encoding = doc["encoding"]
        if encoding not in ENCODINGS:
            fail(f"unknown encoding {encoding!r}; expected one of: {', '.join(ENCODINGS)}")
        table = {}
        for state, action in doc["table"]:
            state = tuple(int(v) for v in state)
            if any(not 0 <= v < len(vocab) for v in state) or int(action) not in state_types(encoding, state):
                fail(f"corrupt table: state {list(state)} -> {action} names a type that is not ready")
            table[state] = int(action)
        return PolicyFile(doc["model"]["name"], doc["model"]["spec_digest"], doc["granularity"],
                          Fsm(vocab, encoding, table), doc.get("training", {}), doc.get("figures", {}))
    except (KeyError, TypeError, ValueError) as e:
        fail(f"corrupt policy: missing or malformed field ({e})")


def check_policy(policy: PolicyFile, path: str, model: str, spec_digest: str | None, granularity: str) -> None:
    """Refuse a policy trained for another model (spec digest) or another granularity."""
    trained_for = f"model '{policy.model}'" if policy.spec_digest else "bare typed DAGs"
    wanted = f"model '{model}'" if spec_digest else "bare typed DAGs"
    if policy.spec_digest != spec_digest:
        if policy.spec_digest and spec_digest and policy.model == model:
            trained_for += f" with another spec (digest {policy.spec_digest[:12]}, this one {spec_digest[:12]})"
        raise ArtifactError(f"this policy was trained for {trained_for}, not for {wanted}; "
                            "train one with `edbc train-policy`", path=path)
    if policy.granularity != granularity:
        level = "typed DAG" if granularity == DAG else f"{granularity} level"
        raise ArtifactError(f"this policy was trained at {policy.granularity} level, the graphs are at {level}; "
                            f"train one with `edbc train-policy --granularity {granularity}`", path=path)
