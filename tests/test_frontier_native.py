"""The native frontier (csrc/frontier.cpp) against the pure-Python oracle (oracle_frontier.py):
identical schedules (same batches, in the same order, of the same types) under agenda, typewise
and the learned FSM, on hundreds of random graphs and every bundled model; identical steps."""

from collections import Counter

import numpy as np
import pytest

from edbc.api import load_data, load_spec
from edbc.data.lattice_dag import CELL_LEVEL, CELLS, lattice_dag
from edbc.data.typed_dag import parse_typed_dag
from edbc.graph import CELL, OP, Graph, build_graph, lower_to_ops
from edbc.policy.encoding import TypeVocab, state_types
from edbc.policy.file import load_policy
from edbc.policy.fsm import Fsm, fsm_schedule
from edbc.policy.resolve import shipped_policy_path
from edbc.policy.search import imitate
from edbc.schedule import Schedule, depth, frontier, schedule
from edbc.schedule.analysis import consumers, same_type_links
from edbc.schedule.policies import HEURISTICS
from edbc.settings import ENCODINGS, MODELS_DIR

from . import oracle_frontier as oracle

MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def random_dag(rng: np.random.Generator) -> Graph:
    """A typed DAG of up to 120 nodes and 6 types (type 0 unbatchable in half of them); arguments
    reach back at most `reach` nodes, so that graphs range from wide to deep, and may repeat."""
    n = int(rng.integers(1, 120))
    num_types = int(rng.integers(1, 7))
    low = int(rng.integers(0, 2))
    reach = int(rng.choice([3, 10, n]))
    lines = [str(n)]
    for v in range(n):
        k = int(rng.integers(0, min(v, 3) + 1))
        args = rng.integers(max(0, v - reach), v, size=k).tolist() if v else []
        lines.append(" ".join(map(str, [int(rng.integers(low, num_types + 1)), len(args), *args])))
    return parse_typed_dag("\n".join(lines))


def random_graphs() -> list[Graph]:
    rng = np.random.default_rng(14)
    graphs = [random_dag(rng) for _ in range(400)]
    for k in range(120):
        graphs.append(lattice_dag(rng, int(rng.integers(1, 9)), cells=(CELL_LEVEL, CELLS)[k % 2]))
    return graphs


GRAPHS = random_graphs()


@pytest.fixture(scope="module")
def model_graphs() -> list[tuple[str, str, object]]:
    """Every bundled model's graph of a synthetic mini-batch, at cell and op level: (model, level, graph)."""
    out = []
    for name in MODELS:
        spec = load_spec(MODELS_DIR / f"{name}.yaml")[0]
        g = build_graph(spec, load_data(spec, None, limit=12, seed=5).instances)
        out += [(name, CELL, g), (name, OP, lower_to_ops(g))]
    return out


def random_table(rng: np.random.Generator, graph, vocab: TypeVocab, encoding: str, keep: float) -> dict:
    """A table of random ready choices over the states the oracle meets on `graph`, each kept with
    probability `keep`: what it drops exercises both fallbacks."""
    s = oracle.Stepper(graph, vocab, encoding)
    table = {}

    def choose(f) -> int:
        state = s.state()
        if not state:
            return s.unknown_choice()
        table.setdefault(state, int(rng.choice(state_types(encoding, state))))
        return s.to_graph[table[state]]

    oracle.drive(s.frontier, choose)
    return {state: a for state, a in table.items() if rng.random() < keep}


def assert_same(native, expected) -> None:
    assert np.array_equal(native.ptr, expected.ptr)
    assert np.array_equal(native.nodes, expected.nodes)
    assert np.array_equal(native.batch_type, expected.batch_type)


def check_fsm(graph, fsm: Fsm) -> int:
    """The native FSM schedule, fallbacks and visits equal the oracle's; returns the fallbacks."""
    visits: Counter = Counter()
    native = fsm_schedule(graph, fsm, visits=visits)
    expected, fallbacks, expected_visits = oracle.fsm_schedule(graph, fsm)
    assert_same(native.schedule, expected)
    assert native.fallbacks == fallbacks and visits == expected_visits
    return fallbacks


def fallback_kinds(fsm: Fsm, graph) -> Counter:
    """How the oracle decides the states `fsm`'s table lacks on `graph`: by a prefix, or by the rank."""
    kinds: Counter = Counter()
    s = oracle.Stepper(graph, fsm.vocab, fsm.encoding)

    def choose(f) -> int:
        state = s.state()
        if not state:
            kinds["unknown"] += 1
            return s.unknown_choice()
        if state in fsm.table:
            return s.to_graph[fsm.table[state]]
        ready = state_types(fsm.encoding, state)
        prefix = fsm.encoding != "max" and any(state[:k] in fsm.table for k in range(1, len(ready)))
        kinds["prefix" if prefix else "rank"] += 1
        return s.to_graph[oracle.fallback(fsm, state)]

    oracle.drive(s.frontier, choose)
    return kinds


def test_consumers_equal_the_oracle(model_graphs):
    for g in GRAPHS + [g for _, _, g in model_graphs]:
        native, expected = consumers(g), oracle.consumers(g)
        for field in ("ptr", "node", "num_args"):
            assert np.array_equal(getattr(native, field), getattr(expected, field))
            assert getattr(native, field).dtype == getattr(expected, field).dtype


def test_depths_equal_the_oracle(model_graphs):
    for g in GRAPHS + [g for _, _, g in model_graphs]:
        assert np.array_equal(depth(g), oracle.depth(g)) and depth(g).dtype == np.int32


def test_same_type_links_equal_the_oracle(model_graphs):
    wide = lattice_dag(np.random.default_rng(2), 2, 70, 80, cells=CELL_LEVEL)  # several words a type
    for g in GRAPHS + [g for _, _, g in model_graphs] + [wide]:
        native, expected = same_type_links(g), oracle.same_type_links(g)
        for field in ("ptr", "node", "num_nearest"):
            assert np.array_equal(getattr(native, field), getattr(expected, field))
            assert getattr(native, field).dtype == getattr(expected, field).dtype


def test_heuristic_schedules_equal_the_oracle_on_random_graphs():
    for g in GRAPHS:
        for policy in ("agenda", "typewise"):
            assert_same(schedule(g, policy), oracle.Schedule.from_batches(policy, oracle.batches_of(policy, g), g))


def test_fsm_schedules_equal_the_oracle_on_random_graphs():
    rng = np.random.default_rng(7)
    kinds: Counter = Counter()
    for k, g in enumerate(GRAPHS):
        names = [t.name for t in g.types if t.batchable]
        if not names:
            continue
        # A vocabulary in another order, lacking a type in a third of the graphs (types it lacks run last).
        rng.shuffle(names)
        vocab = TypeVocab(tuple(names[:-1] if k % 3 == 0 and len(names) > 1 else names))
        encoding = ENCODINGS[k % len(ENCODINGS)]
        full = random_table(rng, g, vocab, encoding, keep=1.0)
        assert check_fsm(g, Fsm(vocab, encoding, full)) == 0
        partial = Fsm(vocab, encoding, {s: a for s, a in full.items() if rng.random() < 0.5})
        check_fsm(g, partial)
        kinds += fallback_kinds(partial, g)
        # Another graph's table: states this graph never met there.
        other = GRAPHS[(k + 1) % len(GRAPHS)]
        if {t.name for t in other.types if t.batchable} >= set(vocab.names):
            check_fsm(g, Fsm(vocab, encoding, random_table(rng, other, vocab, encoding, keep=0.7)))
    assert kinds["prefix"] and kinds["rank"] and kinds["unknown"]


def test_every_bundled_model_schedules_as_the_oracle(model_graphs):
    rng = np.random.default_rng(3)
    for name, level, g in model_graphs:
        for policy in ("agenda", "typewise"):
            assert_same(schedule(g, policy), oracle.Schedule.from_batches(policy, oracle.batches_of(policy, g), g))
        shipped = load_policy(shipped_policy_path(name, level)).fsm
        check_fsm(g, shipped)
        for keep in (0.5, 0.0):  # the shipped table with states removed: both fallbacks
            check_fsm(g, Fsm(shipped.vocab, shipped.encoding,
                             {s: a for s, a in shipped.table.items() if rng.random() < keep}))
        # A vocabulary lacking the type the table chooses most: its nodes wait as unknown types do.
        most = Counter(shipped.table.values()).most_common(1)[0][0]
        kept = [v for v in range(len(shipped.vocab)) if v != most]
        vocab = TypeVocab(tuple(shipped.vocab.names[v] for v in kept))
        check_fsm(g, Fsm(vocab, shipped.encoding, random_table(rng, g, vocab, shipped.encoding, keep=0.6)))


def test_steps_equal_the_oracle():
    """Counts, ideal counts, ready types, states and batches, step by step, under varied choices."""
    rng = np.random.default_rng(11)
    for k, g in enumerate(GRAPHS[::4]):
        encoding = ENCODINGS[k % len(ENCODINGS)]
        vocab = TypeVocab.of_graphs([g])
        s = oracle.Stepper(g, vocab, encoding, track_ideal=True)
        f, o, to_vocab = frontier(g, track_ideal=True), s.frontier, vocab.map_graph(g)
        while True:
            assert np.array_equal(f.run_unbatchable(), np.concatenate(o.run_unbatchable() or [np.zeros(0, int)]))
            assert f.remaining == o.remaining and f.done == o.done
            if o.done:
                break
            assert np.array_equal(f.count, o.count) and np.array_equal(f.ideal, o.ideal)
            assert np.array_equal(f.ready_types(), o.ready_types())
            assert f.state(to_vocab, encoding) == s.state()
            assert f.typewise_choice() == oracle.typewise_choice(o)
            t = int(rng.choice(o.ready_types()))
            assert np.array_equal(f.run(t), o.run(t))
        with pytest.raises(ValueError, match="has no ready node"):
            f.run(int(g.node_type[0]))


def test_a_python_chooser_drives_as_the_oracle():
    for g in GRAPHS[::5]:
        native = Schedule("x", *frontier(g).drive(HEURISTICS["agenda"][0](g).choose))
        assert_same(native, oracle.Schedule.from_batches("x", oracle.drive(oracle.Frontier(g), oracle.agenda_chooser(g)), g))


def oracle_imitate(heuristic: str, graphs: list, vocab: TypeVocab, encoding: str) -> dict:
    """`search.imitate` over the oracle: the heuristic's votes, then one pass filling what the table lacks."""
    choosers = {"agenda": oracle.agenda_chooser, "typewise": lambda g: oracle.typewise_choice}
    votes: dict = {}
    for g in graphs:
        s, choose = oracle.Stepper(g, vocab, encoding, track_ideal=True), choosers[heuristic](g)

        def record(f) -> int:
            t = choose(f)
            state = s.state()
            if state and s.to_vocab[t] >= 0:
                votes.setdefault(state, Counter())[s.to_vocab[t]] += 1
            return t

        oracle.drive(s.frontier, record)
    table = {state: min(c, key=lambda v: (-c[v], v)) for state, c in votes.items()}
    for g in graphs:
        s, choose = oracle.Stepper(g, vocab, encoding, track_ideal=True), choosers[heuristic](g)

        def fill(f) -> int:
            state = s.state()
            if not state:
                return s.unknown_choice()
            if state not in table:
                v = s.to_vocab[choose(f)]
                table[state] = v if v >= 0 else state_types(encoding, state)[0]
            return s.to_graph[table[state]]

        oracle.drive(s.frontier, fill)
    return table


@pytest.mark.parametrize("heuristic", ["agenda", "typewise"])
def test_imitation_tables_equal_the_oracle(heuristic):
    rng = np.random.default_rng(5)
    graphs = [lattice_dag(rng, 4, cells=CELLS) for _ in range(4)]
    vocab = TypeVocab(TypeVocab.of_graphs(graphs).names[:-1])  # one type outside: the unknown rule
    for encoding in ENCODINGS:
        table = imitate(heuristic, graphs, vocab, encoding)
        expected = oracle_imitate(heuristic, graphs, vocab, encoding)
        assert table == expected and list(table) == list(expected)
