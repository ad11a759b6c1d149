"""PQ trees (Booth and Lueker, 1976) for the consecutive-ones property.

A `PQTree` over the ground set ``0..n-1`` represents a set of permutations of
that set. `PQTree.reduce` adds the constraint "these elements are
consecutive"; `PQTree.frontier` reads off one permutation that satisfies every
constraint kept so far. P-nodes allow any order of their children, Q-nodes only
the given order or its reverse.

Implementation notes
--------------------
* Children of a node form a doubly linked list whose links (``_nb1``,
  ``_nb2``) are an unordered pair, as in Booth and Lueker: splicing a Q-node's
  children into its parent in either orientation is then O(1), because nothing
  has to be reversed. The parent keeps its two endmost children (``_first``,
  ``_last``), which fix the left-to-right reading.
* Parent pointers. Booth and Lueker keep parent pointers only on children of
  P-nodes and endmost children of Q-nodes, and recover the others in BUBBLE by
  blocking. Here every node instead points at a union-find cell; the root of
  the cell's set names the parent. Merging one Q-node's children into another
  (templates Q2, Q3 and P6) is a single union, so no child has to be touched,
  and finding a parent costs O(alpha(n)) amortised. BUBBLE therefore never
  blocks: it climbs from the pertinent leaves, counting pertinent children,
  until one node is left, and REDUCE recognises the pertinent root as the first
  node whose pertinent-leaf count equals the size of the set.
* Per-reduce scratch data (labels, counts) is tagged with a reduction stamp
  instead of being cleared, so no reduce walks nodes outside its pertinent
  subtree.
  BUBBLE may climb a little above the pertinent root (never further than the
  height of the pertinent subtree), which is harmless.
* Safe reduce uses an undo log: every write to the tree's structure during
  the REDUCE phase records the old value, and a failing template replays the
  log backwards. A failing reduce thus costs at most twice the work done up
  to the failure, and the tree is restored exactly (path compression done in
  BUBBLE is kept; it changes no parent).
* `PQTree.checkpoint` extends the log over several reduces, so that
  `PQTree.rollback` can take back a group of them together (a planner adding
  a set of constraints that must hold all or none). While a checkpoint is
  open, path compression is logged too: after a union made since the
  checkpoint, compression may skip the united cell, and undoing the union
  alone would then leave a wrong parent.

Reading the tree
----------------
`PQTree.root` and each node's ``kind``, ``leaf`` and ``children`` describe the
tree; ``children`` is built on each access (O(number of children)). The
leaves below any internal node, or below any run of adjacent children of a
Q-node, form a block that is consecutive in every permitted permutation.
`PQTree.frontier` lists the leaves reading every node's children left to right;
the other permitted permutations permute the children of P-nodes freely and
reverse the children of any Q-nodes.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from math import factorial

__all__ = ["PQNode", "PQTree", "reduce_all"]

# Labels of the REDUCE phase; a label is only meaningful while the node's
# stamp equals the tree's current stamp, otherwise the node is empty.
_EMPTY, _FULL, _PARTIAL = 0, 1, 2


class _Cell:
    """Union-find cell; the root cell of a set names the parent of its members."""

    __slots__ = ("_up", "_node", "_rank")

    def __init__(self, node: PQNode):
        self._up: _Cell | None = None
        self._node = node
        self._rank = 0


class PQNode:
    """A node of a PQ tree: ``kind`` is ``'P'``, ``'Q'`` or ``'leaf'``.

    Read-only for callers. ``leaf`` is the element of a leaf (None otherwise);
    ``children`` lists the children left to right, in the order
    `PQTree.frontier` uses (a P-node's children may be permuted freely, a
    Q-node's only reversed).
    """

    __slots__ = ("kind", "leaf", "_first", "_last", "_nchild", "_nb1", "_nb2",
                 "_cell", "_own",
                 # scratch data of the current reduce, valid while _stamp is current
                 "_stamp", "_label", "_pcount", "_pleaves", "_full", "_partial",
                 "_bparent")

    def __init__(self, kind: str, leaf: int | None = None):
        self.kind = kind
        self.leaf = leaf
        self._first: PQNode | None = None
        self._last: PQNode | None = None
        self._nchild = 0
        self._nb1: PQNode | None = None
        self._nb2: PQNode | None = None
        self._cell: _Cell | None = None          # None for the root
        self._own = None if kind == "leaf" else _Cell(self)  # cell given to children
        self._stamp = 0
        self._label = _EMPTY
        self._pcount = 0      # pertinent children not yet reduced
        self._pleaves = 0     # pertinent leaves below, as far as reduced
        self._full: list[PQNode] | None = None      # reduced children by label,
        self._partial: list[PQNode] | None = None   # set up by BUBBLE
        self._bparent: PQNode | None = None     # parent found by BUBBLE

    @property
    def children(self) -> list[PQNode]:
        """The children, left to right (a new list; O(number of children))."""
        out = []
        prev, cur = None, self._first
        while cur is not None:
            out.append(cur)
            prev, cur = cur, (cur._nb2 if cur._nb1 is prev else cur._nb1)
        return out

    def __repr__(self) -> str:
        if self.kind == "leaf":
            return f"PQNode(leaf={self.leaf})"
        return f"PQNode({self.kind!r}, {self._nchild} children)"


def _link_children(parent: PQNode, kids: list[PQNode]) -> None:
    """Make `kids` the children of a fresh `parent`, without logging."""
    cell = parent._own
    prev = None
    for kid in kids:
        kid._cell = cell
        kid._nb1 = prev
        kid._nb2 = None
        if prev is not None:
            prev._nb2 = kid
        prev = kid
    parent._first = kids[0] if kids else None
    parent._last = prev
    parent._nchild = len(kids)


def _root_cell(cell: _Cell) -> _Cell:
    while cell._up is not None:
        cell = cell._up
    return cell


class PQTree:
    """A PQ tree over the ground set ``0..n_leaves-1``.

    Starts as the universal tree (one P-node over all leaves: every
    permutation). Each successful `reduce` narrows it to the permutations in
    which the given subset is consecutive.
    """

    __slots__ = ("_n", "_leaves", "_root", "_stamp", "_log", "_marks")

    def __init__(self, n_leaves: int):
        n = operator.index(n_leaves)
        if n < 0:
            raise ValueError(f"n_leaves must be >= 0, got {n}")
        self._n = n
        self._leaves = [PQNode("leaf", i) for i in range(n)]
        self._stamp = 0
        self._log: list[tuple[object, str, object]] = []
        self._marks: list[int] = []  # open checkpoints: log lengths
        if n == 1:
            self._root = self._leaves[0]
        else:
            self._root = PQNode("P")
            _link_children(self._root, self._leaves)

    # ------------------------------------------------------------------ API

    @property
    def root(self) -> PQNode:
        """The root node (a leaf when the ground set has one element)."""
        return self._root

    def reduce(self, subset: Iterable[int]) -> bool:
        """Add the constraint that `subset` is consecutive, if it can be met.

        Returns True and narrows the tree when some permutation the tree
        allows makes `subset` consecutive; otherwise returns False and leaves
        the tree unchanged. Raises ValueError for an element outside
        ``0..n-1`` or repeated. Amortised cost: O(|subset| + pertinent
        subtree), times a union-find factor.
        """
        leaves = self._leaf_nodes(subset)
        size = len(leaves)
        if size <= 1 or size >= self._n:
            return True
        start = len(self._log)
        self._stamp += 1
        self._bubble(leaves)
        if self._reduce_pertinent(leaves, size):
            if not self._marks:
                self._log.clear()
            return True
        self._rollback(start)
        return False

    def checkpoint(self) -> None:
        """Open a checkpoint: a later `rollback` restores the tree as it is now.

        Checkpoints nest; each is closed by one `commit` or one `rollback`.
        """
        self._marks.append(len(self._log))

    def commit(self) -> None:
        """Close the innermost checkpoint, keeping every reduce made since."""
        self._marks.pop()
        if not self._marks:
            self._log.clear()

    def rollback(self) -> None:
        """Close the innermost checkpoint, undoing every reduce made since."""
        self._rollback(self._marks.pop())
        if not self._marks:
            self._log.clear()

    def frontier(self) -> list[int]:
        """The leaves left to right: a permutation satisfying every kept set."""
        out = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.kind == "leaf":
                out.append(node.leaf)
            else:
                kids = node.children
                kids.reverse()
                stack.extend(kids)
        return out

    def count_permutations(self) -> int:
        """How many permutations of the ground set the tree represents."""
        total = 1
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.kind == "P":
                total *= factorial(node._nchild)
            elif node.kind == "Q":
                total *= 2
            if node.kind != "leaf":
                stack.extend(node.children)
        return total

    def copy(self) -> PQTree:
        """An independent tree representing the same permutations."""
        twin = PQTree.__new__(PQTree)
        twin._n = self._n
        twin._leaves = [PQNode("leaf", i) for i in range(self._n)]
        twin._stamp = 0
        twin._log = []
        twin._marks = []
        twin._root = twin._copy_of(self._root)
        # Copy top-down: each internal node copies its children in order.
        stack = [(self._root, twin._root)]
        while stack:
            node, copied = stack.pop()
            if node.kind == "leaf":
                continue
            kids = node.children
            copies = [twin._copy_of(kid) for kid in kids]
            _link_children(copied, copies)
            stack.extend(zip(kids, copies))
        return twin

    def _copy_of(self, node: PQNode) -> PQNode:
        """A childless copy of `node` for this tree (its own leaf objects)."""
        return self._leaves[node.leaf] if node.kind == "leaf" else PQNode(node.kind)

    # --------------------------------------------------------------- phases

    def _leaf_nodes(self, subset: Iterable[int]) -> list[PQNode]:
        """Validate `subset` and return its leaf nodes."""
        n = self._n
        seen: set[int] = set()
        nodes = []
        for element in subset:
            try:
                i = operator.index(element)
            except TypeError:
                raise ValueError(f"leaf {element!r} is not an integer") from None
            if not 0 <= i < n:
                raise ValueError(f"leaf {element!r} is outside 0..{n - 1}")
            if i in seen:
                raise ValueError(f"leaf {element!r} is repeated")
            seen.add(i)
            nodes.append(self._leaves[i])
        return nodes

    def _bubble(self, leaves: list[PQNode]) -> None:
        """Find the parent and count the pertinent children of every node
        strictly below the pertinent root (and of a few nodes above it).

        Climbs breadth-first from the leaves until a single node is left
        unexamined; as long as two nodes are queued, or a queued node and the
        top of the tree, neither can be the pertinent root's ancestor alone,
        so every pertinent non-root node gets examined.
        """
        stamp = self._stamp
        for leaf in leaves:
            leaf._stamp = stamp
            leaf._label = _EMPTY
            leaf._pcount = 0
            leaf._pleaves = 1
        queue = list(leaves)
        head = 0
        off_top = 0
        while len(queue) - head + off_top > 1:
            node = queue[head]
            head += 1
            cell = node._cell
            if cell is None:
                off_top = 1
                continue
            top = _root_cell(cell)
            # Path compression needs no undo entry unless a checkpoint is
            # open: no union has happened yet in this reduce, so it changes
            # no parent even if this reduce is rolled back.
            if self._marks:
                while cell is not top and cell._up is not top:
                    nxt = cell._up
                    self._set(cell, "_up", top)
                    cell = nxt
            else:
                while cell is not top:
                    cell._up, cell = top, cell._up
            parent = top._node
            node._bparent = parent
            if parent._stamp != stamp:
                parent._stamp = stamp
                parent._label = _EMPTY
                parent._pcount = 1
                parent._pleaves = 0
                parent._full = []
                parent._partial = []
                queue.append(parent)
            else:
                parent._pcount += 1

    def _reduce_pertinent(self, leaves: list[PQNode], size: int) -> bool:
        """Apply templates bottom-up over the pertinent subtree.

        A node is reduced once all its pertinent children are; the first node
        whose pertinent-leaf count reaches `size` is the pertinent root.
        Returns False as soon as no template matches.
        """
        queue = list(leaves)
        head = 0
        while True:
            node = queue[head]
            head += 1
            if node._pleaves == size:
                if node.kind == "P":
                    return self._reduce_p_root(node)
                return self._reduce_q(node, is_root=True) is not None
            parent = node._bparent
            parent._pleaves += node._pleaves
            parent._pcount -= 1
            if parent._pcount == 0:
                queue.append(parent)
            if node.kind == "leaf":
                node._label = _FULL                                # L1
                result = node
            elif node.kind == "P":
                result = self._reduce_p_nonroot(node, parent)
            else:
                result = self._reduce_q(node, is_root=False)
            if result is None:
                return False
            if result._label == _FULL:
                parent._full.append(result)
            else:
                parent._partial.append(result)

    # ------------------------------------------------------------ templates

    def _reduce_p_nonroot(self, node: PQNode, parent: PQNode) -> PQNode | None:
        """Templates P1, P3, P5; returns the node now standing for `node`."""
        full, partial = node._full, node._partial
        if not partial:
            if len(full) == node._nchild:                      # P1
                node._label = _FULL
                return node
            return self._template_p3(node, parent)
        if len(partial) == 1:
            return self._template_p5(node, parent)
        return None

    def _template_p3(self, node: PQNode, parent: PQNode) -> PQNode:
        """Full and empty children only: replace `node` by a partial Q-node
        [full children, empty children]."""
        full_part = self._group_full(node, node._full)
        q = self._new_node("Q", _PARTIAL)
        self._replace(node, q, parent)
        self._attach(q, full_part, at_first=True)
        self._attach(q, self._rest_of(node), at_first=False)
        return q

    def _template_p5(self, node: PQNode, parent: PQNode) -> PQNode:
        """One partial child: it takes `node`'s place, with the full children
        added at its full end and the empty ones at its empty end."""
        q = node._partial[0]
        full_first = self._full_at_first(q)
        self._detach(node, q)
        if node._full:
            self._attach(q, self._group_full(node, node._full), at_first=full_first)
        self._replace(node, q, parent)
        if node._nchild:
            self._attach(q, self._rest_of(node), at_first=not full_first)
        return q

    def _reduce_p_root(self, node: PQNode) -> bool:
        """Templates P1, P2, P4, P6 at the pertinent root."""
        full, partial = node._full, node._partial
        if not partial:
            # P1 when every child is full; otherwise P2 gathers the full ones.
            if 1 < len(full) < node._nchild:
                self._attach(node, self._group_full(node, full), at_first=False)
            return True
        if len(partial) > 2:
            return False
        q = partial[0]
        full_first = self._full_at_first(q)
        self._detach(node, q)
        if full:                                              # P4 and P6
            self._attach(q, self._group_full(node, full), at_first=full_first)
        if len(partial) == 2:                                 # P6
            other = partial[1]
            other_full_first = self._full_at_first(other)
            self._detach(node, other)
            self._merge_q(q, full_first, other, other_full_first)
        if node._nchild:
            self._attach(node, q, at_first=False)
        else:
            cell = node._cell
            self._replace(node, q, None if cell is None else _root_cell(cell)._node)
        return True

    def _reduce_q(self, node: PQNode, is_root: bool) -> PQNode | None:
        """Templates Q1, Q2 and (at the root) Q3; returns `node` or None.

        The pertinent children must form one run; a partial child may only sit
        at an end of the run and is spliced in with its full end facing the
        run. Below the root the run must also reach an end of `node`, with the
        partial child (at most one) at the run's other end.
        """
        full, partial = node._full, node._partial
        if not partial and len(full) == node._nchild:          # Q1
            node._label = _FULL
            return node
        if len(partial) > (2 if is_root else 1):
            return None
        stamp = self._stamp
        start = full[0] if full else partial[0]
        # Walk both ways from `start` over pertinent siblings; record each run
        # end and the sibling just outside it (None at an end of `node`).
        count = 1
        ends = []
        for step in (start._nb1, start._nb2):
            prev, cur = start, step
            while cur is not None and cur._stamp == stamp and cur._label != _EMPTY:
                count += 1
                prev, cur = cur, (cur._nb2 if cur._nb1 is prev else cur._nb1)
            ends.append((prev, cur))
        if count != len(full) + len(partial):
            return None
        (end_a, out_a), (end_b, out_b) = ends
        splices = []  # (partial child, sibling its empty end must face)
        if count == 1:
            # Only below the root: the single pertinent child must be endmost,
            # a partial one facing its full end outwards.
            if out_a is not None and out_b is not None:
                return None
            if partial:
                splices.append((start, out_a if out_a is not None else out_b))
        else:
            for child in partial:
                if child is end_a:
                    splices.append((child, out_a))
                    far_out = out_b
                elif child is end_b:
                    splices.append((child, out_b))
                    far_out = out_a
                else:
                    return None
                if not is_root and far_out is not None:
                    return None
            if not is_root and not partial and out_a is not None and out_b is not None:
                return None
        for child, out in splices:
            self._splice(node, child, out)
        node._label = _PARTIAL
        return node

    # ------------------------------------------------------------- helpers

    def _full_at_first(self, q: PQNode) -> bool:
        """Whether partial Q-node `q` has its full end at `_first`."""
        end = q._first
        return end._stamp == self._stamp and end._label == _FULL

    def _group_full(self, node: PQNode, full: list[PQNode]) -> PQNode:
        """Detach the full children `full` from `node` and return them as one
        node (the child itself, or a new full P-node over them)."""
        if len(full) == 1:
            self._detach(node, full[0])
            return full[0]
        group = self._new_node("P", _FULL)
        for child in full:
            self._detach(node, child)
            self._attach(group, child, at_first=False)
        return group

    def _rest_of(self, node: PQNode) -> PQNode:
        """`node` itself, or its only child (detached) when just one is left."""
        if node._nchild == 1:
            only = node._first
            self._detach(node, only)
            return only
        return node

    def _new_node(self, kind: str, label: int) -> PQNode:
        node = PQNode(kind)
        node._stamp = self._stamp
        node._label = label
        return node

    def _merge_q(self, q: PQNode, full_first: bool, other: PQNode,
                 other_full_first: bool) -> None:
        """Append Q-node `other`'s children at `q`'s full end, full ends
        facing (template P6); `other` is discarded."""
        end = q._first if full_first else q._last
        near, far = ((other._first, other._last) if other_full_first
                     else (other._last, other._first))
        self._relink(end, None, near)
        self._relink(near, None, end)
        self._set(q, "_first" if full_first else "_last", far)
        self._set(q, "_nchild", q._nchild + other._nchild)
        self._union(q, other)

    def _splice(self, node: PQNode, child: PQNode, out: PQNode | None) -> None:
        """Replace partial Q-child `child` of Q-node `node` by its children,
        its empty end next to sibling `out` (None: an end of `node`)."""
        inner = child._nb2 if child._nb1 is out else child._nb1
        if self._full_at_first(child):
            full_end, empty_end = child._first, child._last
        else:
            full_end, empty_end = child._last, child._first
        for end, sibling in ((full_end, inner), (empty_end, out)):
            if sibling is None:
                self._set(node, "_first" if node._first is child else "_last", end)
            else:
                self._relink(end, None, sibling)
                self._relink(sibling, child, end)
        self._set(node, "_nchild", node._nchild + child._nchild - 1)
        self._union(node, child)

    def _union(self, q: PQNode, absorbed: PQNode) -> None:
        """Make `absorbed`'s children (already linked into `q`) children of `q`."""
        keep, drop = _root_cell(q._own), _root_cell(absorbed._own)
        if keep._rank < drop._rank:
            keep, drop = drop, keep
        self._set(drop, "_up", keep)
        if keep._rank == drop._rank:
            self._set(keep, "_rank", keep._rank + 1)
        self._set(keep, "_node", q)

    def _relink(self, node: PQNode, old: PQNode | None, new: PQNode | None) -> None:
        """Replace neighbour `old` of `node` by `new`."""
        if node._nb1 is old:
            self._set(node, "_nb1", new)
        else:
            self._set(node, "_nb2", new)

    def _detach(self, parent: PQNode, child: PQNode) -> None:
        """Unlink `child` from `parent`'s children in O(1)."""
        a, b = child._nb1, child._nb2
        if a is not None:
            self._relink(a, child, b)
        if b is not None:
            self._relink(b, child, a)
        neighbour = a if a is not None else b
        if parent._first is child:
            self._set(parent, "_first", neighbour)
        if parent._last is child:
            self._set(parent, "_last", neighbour)
        self._set(parent, "_nchild", parent._nchild - 1)
        self._set(child, "_nb1", None)
        self._set(child, "_nb2", None)
        self._set(child, "_cell", None)

    def _attach(self, parent: PQNode, child: PQNode, at_first: bool) -> None:
        """Add detached `child` at one end of `parent`'s children."""
        end = parent._first if at_first else parent._last
        self._set(child, "_cell", parent._own)
        self._set(child, "_nb1", end)
        self._set(child, "_nb2", None)
        if end is None:
            self._set(parent, "_first", child)
            self._set(parent, "_last", child)
        else:
            self._relink(end, None, child)
            self._set(parent, "_first" if at_first else "_last", child)
        self._set(parent, "_nchild", parent._nchild + 1)

    def _replace(self, old: PQNode, new: PQNode, parent: PQNode | None) -> None:
        """Put detached `new` where `old` stands (under `parent`, or as the
        root); `old` ends up detached."""
        a, b = old._nb1, old._nb2
        self._set(new, "_cell", old._cell)
        self._set(new, "_nb1", a)
        self._set(new, "_nb2", b)
        if a is not None:
            self._relink(a, old, new)
        if b is not None:
            self._relink(b, old, new)
        if parent is None:
            self._set(self, "_root", new)
        else:
            if parent._first is old:
                self._set(parent, "_first", new)
            if parent._last is old:
                self._set(parent, "_last", new)
        self._set(old, "_nb1", None)
        self._set(old, "_nb2", None)
        self._set(old, "_cell", None)

    def _set(self, obj: object, attr: str, value: object) -> None:
        """Write a structural field, remembering the old value for rollback."""
        self._log.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def _rollback(self, start: int) -> None:
        """Undo the logged writes after position `start` of the log."""
        log = self._log
        for obj, attr, old in reversed(log[start:]):
            setattr(obj, attr, old)
        del log[start:]


def reduce_all(tree: PQTree, sets: Iterable[Iterable[int]]) -> list[bool]:
    """Reduce `tree` by each set in order; return which sets were kept.

    A set that cannot be made consecutive together with the sets kept before
    it is dropped and leaves the tree unchanged.
    """
    return [tree.reduce(s) for s in sets]
