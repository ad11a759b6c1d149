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
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .. import __version__
from ..artifact import _canonical as canonical_json, check_document, expect, expect_int, expect_ints, parse_json, \
    read_bytes, show, write_atomic
from ..errors import ArtifactError
from ..graph.ir import CELL, DAG, OP
from ..settings import ENCODINGS
from .encoding import State, TypeVocab, is_state, state_types
from .fsm import Fsm

FORMAT = "edbc.policy"
VERSION = (1, 0)
DAG_MODEL = "typed-dag"  # the model name of policies for bare typed DAGs
GRANULARITIES = (CELL, OP, DAG)


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


def save_policy(policy: PolicyFile, path: str | Path, inputs: Iterable[str | None] = ()) -> None:
    """Write `policy` atomically; `inputs` (what it was trained from) are never overwritten."""
    write_atomic(path, (_pretty(policy.document()) + "\n").encode(), inputs)


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

    doc = parse_json(read_bytes(path, "policy"), fail, "an edbc policy file")
    if not isinstance(doc, dict):
        fail(f"not an {FORMAT} file: the document is not a JSON object")
    check_document(doc, FORMAT, VERSION[0], fail)
    names = expect(doc.get("types"), list, "types", fail)
    if not all(type(n) is str for n in names) or len(set(names)) != len(names):
        fail(f"types is {show(names)}; expected a list of distinct type names")
    encoding = doc.get("encoding")
    if encoding not in ENCODINGS:
        fail(f"unknown encoding {show(encoding)}; expected one of: {', '.join(ENCODINGS)}")
    model = expect(doc.get("model"), dict, "model", fail)
    digest = model.get("spec_digest")
    if digest is not None:
        expect(digest, str, "model.spec_digest", fail)
    if doc.get("granularity") not in GRANULARITIES:
        fail(f"granularity is {show(doc.get('granularity'))}; expected one of: {', '.join(GRANULARITIES)}")
    table = parse_table(doc.get("table"), len(names), encoding, fail)
    return PolicyFile(expect(model.get("name"), str, "model.name", fail), digest, doc["granularity"],
                      Fsm(TypeVocab(tuple(names)), encoding, table),
                      expect(doc.get("training", {}), dict, "training", fail),
                      expect(doc.get("figures", {}), dict, "figures", fail))


def parse_table(entries, num_types: int, encoding: str, fail) -> dict[State, int]:
    """A table from its JSON, `[[state, type], ...]`, refused (`fail`) unless every state is one the
    encoding makes of vocabulary ids, no state appears twice, and every type is ready in its state."""
    table: dict[State, int] = {}
    for entry in expect(entries, list, "table", fail):
        if type(entry) is not list or len(entry) != 2:
            fail(f"corrupt table: entry {show(entry)}; expected [state, type]")
        state = tuple(expect_ints(entry[0], "a table state", fail, 0, num_types - 1))
        action = expect_int(entry[1], "a table type", fail, 0, num_types - 1)
        if not is_state(encoding, state):
            fail(f"corrupt table: {list(state)} is not a {encoding} state; expected distinct ready types")
        if action not in state_types(encoding, state):
            fail(f"corrupt table: state {list(state)} -> {action} names a type that is not ready")
        if state in table:
            fail(f"corrupt table: state {list(state)} appears twice")
        table[state] = action
    return table


def check_policy(policy: PolicyFile, path: str, model: str, spec_digest: str | None, granularity: str) -> None:
    """Refuse a policy trained for another model (spec digest) or another granularity."""
    trained_for = f"model '{policy.model}'" if policy.spec_digest else "bare typed DAGs"
    wanted = f"model '{model}'" if spec_digest else "bare typed DAGs"
    if policy.spec_digest != spec_digest:
        if policy.spec_digest and spec_digest and policy.model == model:  # an edited spec keeping its name
            raise ArtifactError(f"this policy was trained for another version of model '{model}' (spec digest "
                                f"{policy.spec_digest[:12]}, this spec {spec_digest[:12]}); train one with "
                                "`edbc train-policy`", path=path)
        raise ArtifactError(f"this policy was trained for {trained_for}, not for {wanted}; "
                            "train one with `edbc train-policy`", path=path)
    if policy.granularity != granularity:
        level = "typed DAG" if granularity == DAG else f"{granularity} level"
        raise ArtifactError(f"this policy was trained at {policy.granularity} level, the graphs are at {level}; "
                            f"train one with `edbc train-policy --granularity {granularity}`", path=path)
