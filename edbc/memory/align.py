"""Aligned orders: choose the order of the nodes inside every batch so that operands are slices.

The problem, shared by the whole-mini-batch planner and the planner inside cells:
batches `0..B-1` in run order, batch `b` has `sizes[b]` positions. An operand
of a consumer batch `c` is a `Request`: for each of `c`'s nodes, the producer
batch and the position there of the value it reads. The operand is a view when
those values are consecutive in the producer's order *and* in `c`'s order
(aligned): row `j` of the operand belongs to node `j` of `c`.

Alignment makes orders depend on each other, so the solver keeps *order
classes* (union-find over batches): a batch that **follows** a producer takes
its order from the producer (its nodes are identified with the positions they
read), so whatever order the producer finally gets, that operand is aligned.
Each class root holds the consecutive-ones constraints of its whole class,
in a PQ tree (`edbc.memory.pqtree`), built only once two kept sets cross
(while any two are disjoint or nested, a containment forest orders them).
Moving a class into another adds all its sets or none (PQ-tree checkpoints).
A consumer that already follows someone **pins** its other single-source
operands instead: the producer keeps the read set consecutive, and once the
consumer's order is known the producer lays that range out in it. A consumer
whose operand reads whole producer blocks (every node of a batch, e.g. the
chunks of a gate vector, or all steps of a chain) may follow a **composite**
of them: its order is their orders one after the other, in an order of the
parts chosen by a PQ tree over them so that its own kept sets stay
consecutive, and the blocks must be adjacent in memory (`chains`).

Requests are decided consumer by consumer in reverse run order, so that all
constraints on a batch are known before it decides whom to follow; within a
consumer, larger requests first. A request whose constraints cannot be added
(the PQ tree's safe reduce fails) is dropped: that operand stays a gather.
The solver is a heuristic; the runtime classifies operands from the final
layout, so a request that ends up unaligned costs a gather, never a wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pqtree import PQTree


@dataclass(frozen=True, eq=False)
class Request:
    """Operand of `consumer`: its node `j` reads position `index[j]` of batch `batch[j]`,
    in memory block `block[j]` (a batch's output slot). `weight`: bytes a view saves.
    `partial`: reads fewer rows of some block than the block holds, so when it spans
    several blocks it can never follow a composite of them."""

    consumer: int
    batch: np.ndarray
    index: np.ndarray
    block: np.ndarray
    weight: int
    partial: bool = False


@dataclass
class Orders:
    """The solution: `orders[b][i]` is the node of batch b at position i of its memory block;
    each chain lists blocks that must be adjacent in memory, in that order."""

    orders: list[np.ndarray]
    chains: list[list[int]]
    followed: int = 0  # requests served by following the producer
    pinned: int = 0  # by pinning the producer's range
    composite: int = 0  # by following a composite of whole blocks
    dropped: int = 0  # whose constraints could not be added


@dataclass(eq=False)
class _Class:
    """The constraints of an order class, on the positions of its root batch.

    While the kept sets are laminar (any two disjoint or nested), they are a
    containment forest and need no PQ tree; the tree is built when a set
    crosses another one.
    """

    size: int
    fixed: bool
    sets: list[np.ndarray] = field(default_factory=list)  # kept consecutive sets
    inner: np.ndarray | None = None  # laminar: innermost kept set of each position, -1 none
    parent: list[int] = field(default_factory=list)  # laminar: smallest kept set strictly containing a set
    tree: PQTree | None = None
    # (consumer, some of its nodes, their positions here): lay those positions out in the consumer's order
    pins: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    parts: list[tuple[int, np.ndarray]] | None = None  # composite: (batch, root position of its t-th node)
    _saved: list = field(default_factory=list)

    def __post_init__(self):
        self.inner = np.full(self.size, -1, dtype=np.int32)

    # -- transactions: a group of sets is added all or none
    def begin(self) -> None:
        if self.tree is not None:
            self.tree.checkpoint()
            self._saved.append((len(self.sets), None))
        else:
            self._saved.append((len(self.sets), (self.inner.copy(), list(self.parent))))

    def commit(self) -> None:
        _, laminar = self._saved.pop()
        if laminar is None:
            self.tree.commit()

    def rollback(self) -> None:
        n_sets, laminar = self._saved.pop()
        del self.sets[n_sets:]
        if laminar is None:
            self.tree.rollback()
        else:
            self.tree = None  # if it was built inside the transaction, build it again when needed
            self.inner, self.parent = laminar

    def add(self, s: np.ndarray) -> bool:
        """Keep positions `s` consecutive, if that can be met with the sets kept so far."""
        if len(s) <= 1 or len(s) >= self.size:
            return True
        if self.fixed:
            return int(s.max()) - int(s.min()) == len(s) - 1
        if self.tree is None:
            kept = self._add_laminar(s)
            if kept is not None:
                return kept
            self.tree = PQTree(self.size)
            for old in self.sets:
                if not self.tree.reduce(old.tolist()):
                    raise AssertionError("kept sets no longer fit a PQ tree")
        if self.tree.reduce(s.tolist()):
            self.sets.append(s)
            return True
        return False

    def absorb(self, other: "_Class", target: np.ndarray) -> bool:
        """Keep `target` and every set of `other` mapped by `target` consecutive, all or none.

        Along a chain every follow moves the consumer's whole family of sets into
        the producer's class; adding them one by one would cost the family per
        step. When both are containment forests, `other`'s forest is mapped over
        in one piece and this class's own sets (usually fewer) are added to it:
        the same family, so the same answer.
        """
        if self.fixed or self.tree is not None or other.tree is not None or len(other.sets) <= len(self.sets):
            self.begin()
            if self.add(target) and all(self.add(target[s]) for s in other.sets):
                self.commit()
                return True
            self.rollback()
            return False
        merged = _Class(self.size, False)
        merged.sets = [target[s] for s in other.sets]
        merged.parent = list(other.parent)
        merged.inner[target] = other.inner
        if not (merged.add(target) and all(merged.add(s) for s in self.sets)):
            return False
        self.sets, self.inner, self.parent, self.tree = merged.sets, merged.inner, merged.parent, merged.tree
        return True

    def _add_laminar(self, s: np.ndarray) -> bool | None:
        """Add `s` to the containment forest; None when it crosses a kept set.

        From each member's innermost kept set, climb while sets are smaller than `s`:
        those must lie inside `s`. The first set at least as large must contain `s`,
        the same one for every member, or `s` crosses it; its ancestors contain `s`
        too and are never visited. Each set is climbed through once (later climbs
        stop at a visited one), so an add costs its members and the sets inside it,
        not the depth of the forest. The largest sets inside `s` must lie wholly in
        `s`; the ones inside them then do too. Plain Python: the sets are small and many.
        """
        members = self.inner[s].tolist()
        counts: dict[int, int] = {}
        for o in members:
            counts[o] = counts.get(o, 0) + 1
        parent, sets, size = self.parent, self.sets, len(s)
        resolved: dict[int, tuple[int, int]] = {}  # set inside s -> (largest set inside s above it, set above that)
        held: dict[int, int] = {}  # largest kept sets inside s -> members of s they hold
        stop = None  # the smallest kept set at least as large as s that holds members of s
        stopped = 0  # members of s under it
        for o, n in counts.items():
            path = []
            while o >= 0 and len(sets[o]) < size and o not in resolved:
                path.append(o)
                o = parent[o]
            top, above = resolved[o] if o in resolved else (path[-1] if path else -1, o)
            for u in path:
                resolved[u] = (top, above)
            if top >= 0:
                held[top] = held.get(top, 0) + n
            if above >= 0:
                if stop is None:
                    stop = above
                elif stop != above:
                    return None  # members under two different large sets: one of them crosses s
                stopped += n
        if stop is not None and stopped != size:
            return None  # a larger set holds only part of s
        for u, n in held.items():
            if n != len(sets[u]):
                return None  # a smaller set sticks out of s
        if stop is not None and len(sets[stop]) == size:
            return True  # the same set again
        new = len(sets)
        for u in held:
            parent[u] = new
        parent.append(stop if stop is not None else -1)
        sets.append(s)
        self.inner[s] = [o if o in resolved else new for o in members]
        return True

    def base_order(self) -> np.ndarray:
        """An order meeting every kept set, before pins are applied."""
        if self.fixed or not self.sets:
            return np.arange(self.size)
        if self.tree is not None:
            return np.array(self.tree.frontier(), dtype=np.int64)
        # laminar: sort by the first positions of the enclosing sets, outermost first
        anchor = [int(x.min()) for x in self.sets]
        path: list[tuple | None] = [None] * len(self.sets)

        def key_of(u: int) -> tuple:
            if path[u] is None:
                p = self.parent[u]
                path[u] = (key_of(p) if p >= 0 else ()) + (anchor[u],)
            return path[u]
        inner = self.inner.tolist()
        keys = [key_of(u) + (x,) if u >= 0 else (x,) for x, u in enumerate(inner)]
        return np.array(sorted(range(self.size), key=keys.__getitem__), dtype=np.int64)


class _Solver:
    def __init__(self, sizes: np.ndarray, fixed: np.ndarray):
        self.sizes = sizes
        self.classes: list[_Class | None] = [_Class(int(k), bool(f)) for k, f in zip(sizes, fixed)]
        self.parent = list(range(len(sizes)))
        self.to_parent: list[np.ndarray | None] = [None] * len(sizes)  # None: identity
        self.decided = np.zeros(len(sizes), dtype=bool)
        self.next_block: dict[int, int] = {}
        self.prev_block: dict[int, int] = {}
        self.identities: dict[int, np.ndarray] = {}

    def _identity(self, size: int) -> np.ndarray:
        identity = self.identities.get(size)
        if identity is None:
            identity = self.identities[size] = np.arange(size)
            identity.flags.writeable = False  # shared by every root of this size
        return identity

    def find(self, b: int) -> tuple[int, np.ndarray]:
        """The class root of batch b and the root position of each of b's nodes."""
        path = []
        while self.parent[b] != b:
            path.append(b)
            b = self.parent[b]
        root = b
        mapping = self._identity(int(self.sizes[root]))
        # compose from the root down, compressing the path on the way
        for x in reversed(path):
            mapping = mapping[self.to_parent[x]] if self.to_parent[x] is not None else mapping
            self.parent[x] = root
            self.to_parent[x] = mapping
        if not path:
            return root, mapping
        return root, self.to_parent[path[0]]

    # -- the three ways to serve a request
    def follow(self, c: int, target_root: int, target: np.ndarray) -> bool:
        """Consumer root c joins `target_root`'s class; its node j becomes position target[j]."""
        mine, theirs = self.classes[c], self.classes[target_root]
        if theirs.fixed and mine.pins:
            return False
        if not theirs.absorb(mine, target):
            return False
        theirs.pins.extend((d, nodes, target[t]) for d, nodes, t in mine.pins)
        self.classes[c] = None
        self.parent[c] = target_root
        self.to_parent[c] = target
        return True

    def pin(self, c: int, root_c: int, at_c: np.ndarray, producer: int, target: np.ndarray) -> bool:
        if len(target) <= 1:
            return True  # one row is aligned in any order
        cls = self.classes[producer]
        if cls.fixed:
            return False
        if root_c == producer and np.isin(target, at_c).any():
            return False  # the operand overlaps the consumer's own rows in one class
        if not cls.add(target):
            return False
        cls.pins.append((c, np.arange(len(target)), target))
        return True

    def composite(self, c: int, parts: list[tuple[int, int, np.ndarray]]) -> bool:
        """Consumer root c takes the orders of whole producer batches one after another.

        `parts`: (producer batch, its block, members) with members[t] the node of c
        that reads the producer's t-th node. The order of the parts is chosen with
        a PQ tree over them, so that c's own kept sets that span several parts
        stay consecutive; sets inside one part move to that part's producer.
        """
        mine = self.classes[c]
        part_of = np.empty(mine.size, dtype=np.int64)
        where = np.empty(mine.size, dtype=np.int64)
        for j, (_, _, members) in enumerate(parts):
            part_of[members] = j
            where[members] = np.arange(len(members))
        part_size = np.array([len(members) for _, _, members in parts])
        moved: list[tuple[int, np.ndarray]] = []
        spanning = PQTree(len(parts))
        for s in mine.sets:
            owners = np.unique(part_of[s])
            if len(owners) == 1:
                moved.append((parts[owners[0]][0], where[s]))
            elif len(s) != part_size[owners].sum() or not spanning.reduce(owners.tolist()):
                return False  # covers a part partly, or no order of the parts keeps it consecutive
        pins = []  # a pin over several parts becomes one per part: each producer follows the consumer there
        for d, nodes, t in mine.pins:
            for j in np.unique(part_of[t]):
                mask = part_of[t] == j
                pins.append((parts[j][0], d, nodes[mask], where[t[mask]]))
        parts = [parts[j] for j in spanning.frontier()]
        blocks = [blk for _, blk, _ in parts]
        if not self._chain_fits(blocks):
            return False
        opened = []
        for producer, s in moved:
            cls = self.classes[producer]
            if cls not in opened:
                cls.begin()
                opened.append(cls)
            if not cls.add(s):
                for o in opened:
                    o.rollback()
                return False
        for o in opened:
            o.commit()
        for producer, d, nodes, t in pins:
            self.classes[producer].pins.append((d, nodes, t))
        mine.sets, mine.pins, mine.inner, mine.tree = [], [], None, None
        mine.parts = [(producer, members) for producer, _, members in parts]
        for x, y in zip(blocks, blocks[1:]):
            self.next_block[x] = y
            self.prev_block[y] = x
        return True

    def _chain_fits(self, blocks: list[int]) -> bool:
        if len(set(blocks)) != len(blocks):
            return False
        for a, b in zip(blocks, blocks[1:]):
            if self.next_block.get(a, b) != b or self.prev_block.get(b, a) != a:
                return False
        # a cycle would close if the last block already leads back to the first
        x = blocks[-1]
        while x in self.next_block:
            x = self.next_block[x]
            if x == blocks[0]:
                return False
        return True

    def decide(self, request: Request) -> str:
        c = request.consumer
        blocks = request.block
        if np.all(blocks == blocks[0]):
            producer = int(request.batch[0])
            root_p, at_p = self.find(producer)
            target = at_p[request.index]
            root_c, at_c = self.find(c)
            if root_c == root_p and np.array_equal(at_c, target):
                return "satisfied"
            if not self.decided[c] and root_c == c and root_p != c:
                if self.follow(c, root_p, target):
                    self.decided[c] = True
                    return "followed"
            return "pinned" if self.pin(c, root_c, at_c, root_p, target) else "dropped"
        if self.decided[c] or request.partial:
            return "dropped"
        order = np.argsort(blocks, kind="stable")
        cuts = np.flatnonzero(np.diff(blocks[order])) + 1
        parts = []
        for group in np.split(order, cuts):
            producer = int(request.batch[group[0]])
            if len(group) != self.sizes[producer] or self.find(producer)[0] != producer:
                return "dropped"
            members = np.empty(len(group), dtype=np.int64)
            members[request.index[group]] = group
            parts.append((producer, int(blocks[group[0]]), members))
        if self.composite(c, parts):
            self.decided[c] = True
            return "composite"
        return "dropped"

    # -- reading the orders off
    def orders(self, max_passes: int = 8) -> list[np.ndarray]:
        """Every batch's order: class roots start from an order meeting their sets, then
        each pin lays its range out in its consumer's current order, consumers first,
        pass after pass until nothing changes (pins of two classes may read each other)."""
        n = len(self.sizes)
        roots = [r for r in range(n) if self.classes[r] is not None]
        order: dict[int, np.ndarray] = {}
        pos: dict[int, np.ndarray] = {}
        for r in roots:
            if self.classes[r].parts is None:
                order[r] = self.classes[r].base_order()
                pos[r] = _inverse(order[r])

        composite_pos: dict[int, np.ndarray] = {}  # composite roots, valid until a pin moves something

        def root_pos(root: int) -> np.ndarray:
            parts = self.classes[root].parts
            if parts is None:
                return pos[root]
            if root not in composite_pos:  # parts are earlier batches: no cycle
                composite_pos[root] = _inverse(np.concatenate([members[batch_order(producer)]
                                                               for producer, members in parts]))
            return composite_pos[root]

        def batch_order(b: int) -> np.ndarray:
            root, at = self.find(b)
            return np.argsort(root_pos(root)[at], kind="stable")

        for _ in range(max_passes):
            changed = False
            for r in sorted(order, reverse=True):
                pins = self.classes[r].pins
                # pins from other classes first; a class's own (mirror) pins read its updated order
                for mirror in (False, True):
                    for d, nodes, target in pins:
                        if (self.find(d)[0] == r) != mirror:
                            continue
                        rank = _inverse(batch_order(d))[nodes]
                        if _rewrite(order[r], pos[r], target[np.argsort(rank, kind="stable")]):
                            changed = True
                            composite_pos.clear()
            if not changed:
                break
        return [batch_order(b) if self.sizes[b] else np.zeros(0, dtype=np.int64) for b in range(n)]

    def chains(self) -> list[list[int]]:
        out = []
        for head in self.next_block:
            if head in self.prev_block:
                continue
            chain = [head]
            while chain[-1] in self.next_block:
                chain.append(self.next_block[chain[-1]])
            out.append(chain)
        return out


def _inverse(order: np.ndarray) -> np.ndarray:
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    return where


def _rewrite(order: np.ndarray, pos: np.ndarray, sequence: np.ndarray) -> bool:
    """Lay `sequence` out, in this order, over the positions its members hold now; whether
    anything moved."""
    slots = np.sort(pos[sequence])
    if np.array_equal(order[slots], sequence):
        return False
    order[slots] = sequence
    pos[sequence] = slots
    return True


def solve_orders(sizes, requests: list[Request], fixed=None) -> Orders:
    """Orders of every batch's nodes serving as many `requests` as possible (see the module doc).

    `fixed[b]`: batch b's order is given (identity) and may not change.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    fixed = np.zeros(len(sizes), dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    solver = _Solver(sizes, fixed)
    by_consumer: dict[int, list[Request]] = {}
    for r in requests:
        by_consumer.setdefault(r.consumer, []).append(r)
    counts = {"followed": 0, "pinned": 0, "composite": 0, "dropped": 0, "satisfied": 0}
    for c in sorted(by_consumer, reverse=True):
        for r in sorted(by_consumer[c], key=lambda r: -r.weight):
            counts[solver.decide(r)] += 1
    return Orders(solver.orders(), solver.chains(), counts["followed"], counts["pinned"],
                  counts["composite"], counts["dropped"])
