"""Golden replay: a fixed set of specs and data must compile to the committed plan digests.

Any change that alters plans (graphs, schedules, layouts, compiled cells) fails
here and must say so: rerun with `EDBC_UPDATE_GOLDEN=1` to write the new
digests into `fixtures/golden_plans.json`, and commit them with the change
that explains why. Digests leave out which edbc and torch versions wrote the
plan (`edbc.plan.plan_digest`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edbc.api import CompileOptions, compile_plan, load_data, load_spec
from edbc.plan.plan import plan_digest
from edbc.settings import MODELS_DIR

GOLDEN = Path(__file__).parent / "fixtures" / "golden_plans.json"

# model, policy, granularity, memory: synthetic data (seed 5, 24 instances), mini-batches of 8
CASES = [
    ("treelstm", "fsm", "cell", "pq"),
    ("treelstm", "typewise", "op", "none"),
    ("treegru", "agenda", "cell", "pq"),
    ("bilstm_tagger", "fsm", "cell", "pq"),
    ("lstm_seq2seq", "agenda", "op", "pq"),
    ("lattice_lstm", "fsm", "cell", "pq"),
    ("lattice_gru", "depth", "op", "pq"),
    ("mvrnn", "typewise", "cell", "none"),
    ("treelstm_onnx", "agenda", "cell", "pq"),
    ("dag_rnn", "eager", "cell", "pq"),
]


def _name(case) -> str:
    return "-".join(case)


def _digest(case) -> str:
    model, policy, granularity, memory = case
    spec, text = load_spec(MODELS_DIR / f"{model}.yaml")
    data = load_data(spec, None, limit=24, seed=5)
    return plan_digest(compile_plan(spec, text, data, 8, CompileOptions(policy, granularity, memory), seed=5))


def test_plans_match_their_golden_digests():
    digests = {_name(c): _digest(c) for c in CASES}
    if os.environ.get("EDBC_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in digests if golden.get(k) != digests[k])
    assert not changed, (f"plans changed for {', '.join(changed)}; if the change means to alter plans, "
                         "rerun with EDBC_UPDATE_GOLDEN=1 and commit tests/fixtures/golden_plans.json")


def test_the_digest_ignores_tool_versions_but_not_content(monkeypatch):
    import edbc.plan.plan as plan_module

    case = CASES[0]
    before = _digest(case)
    monkeypatch.setattr(plan_module, "__version__", "9.9.9")
    assert _digest(case) == before
    assert _digest(("treelstm", "agenda", "cell", "pq")) != before


@pytest.mark.parametrize("case", CASES[:2], ids=_name)
def test_digests_are_stable_across_runs(case):
    assert _digest(case) == _digest(case)
